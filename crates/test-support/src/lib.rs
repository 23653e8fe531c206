//! Test helpers: real upstream HTTP servers on loopback, clients, and polling helpers.
