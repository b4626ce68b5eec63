//! Nothing here: the end-to-end tests live in `e2e/`, as one test binary with a `util` module.
#![forbid(unsafe_code)]
