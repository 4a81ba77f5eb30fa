//! Auth shared by the services.
//!
//! * [`internal`]: the shared internal token between services (gateway → ingestion, vision
//!   adapter → media access), header `x-internal-token`, compared in constant time.
//! * [`owner`]: the caller's identity (JWT subject) as the gateway passes it on, header `x-owner`;
//!   trusted only on routes the internal token protects.

pub mod internal;
pub mod owner;
