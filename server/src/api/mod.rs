//! HTTP endpoints beyond static file serving.

pub mod admin;
pub mod devices;
pub mod fleet;
pub mod health;
pub mod openapi;
pub mod releases;
pub mod repository;
pub mod rollouts;
pub mod routes;

pub use crate::error::{body_rejection, path_rejection, ApiError};
