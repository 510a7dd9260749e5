//! The TUF client workflow (specification 1.0.34, section 5). Being written.
