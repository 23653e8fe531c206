//! The one place where a failure becomes a status code and an error page.

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

/// Content type of every page the proxy renders.
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");

/// An error page for `status`; `message` is the stop message of a stopped service (503).
pub fn page(status: StatusCode, message: Option<&str>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(crate::pages::render(status, message)));
    *resp.status_mut() = status;
    // hyper adds `Date` itself.
    resp.headers_mut().insert(CONTENT_TYPE, HTML);
    resp
}
