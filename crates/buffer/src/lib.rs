//! Request and response body limits and buffering (memory first, then an anonymous temp file).
//!
//! Not implemented yet: this crate lands with the "Buffering" issue. It exists now so the
//! workspace layout is final and the binary can depend on it.
