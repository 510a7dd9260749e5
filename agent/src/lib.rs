//! The device agent.
