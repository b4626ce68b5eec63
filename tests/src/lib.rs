//! Placeholder library so the test package builds.
