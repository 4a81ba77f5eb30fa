//! Object storage for images.
//!
//! * [`ObjectStore`]: the client every service uses (aws-sdk-s3, path-style, explicit
//!   endpoint/region/credentials): presigned PUT with the content type bound into the signature,
//!   presigned GET, HEAD, GET with a size cap, DELETE, bucket creation at start.
//! * [`embedded::EmbeddedS3`]: an S3-compatible server on local disk for the one-process mode
//!   (s3s + s3s-fs): real SigV4 checks on headers and presigned URLs, expiry, a size limit. The
//!   client code path is the same as against Garage, MinIO or AWS.
//! * [`keys`]: object keys `images/yyyy/MM/dd/{uuid}.{ext}`, generated, never taken from input.

mod client;
pub mod embedded;
pub mod keys;

pub use client::{ObjectInfo, ObjectStore, Presigned, S3Config, StoreError};
