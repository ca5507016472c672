//! Persistence: the content checks every writer runs before commit (`content`), the on-disk
//! cache with atomic commits and an LRU size bound (`disk`), single-flight coordination of cache
//! fills (`flight`), the pins of private versions (`pins`), the S3-compatible tier shared by
//! replicas (`shared`), and private repository mirrors (`mirror`). Nothing here knows about HTTP.

pub mod content;
pub mod disk;
pub mod durable;
pub mod file_body;
pub mod flight;
pub mod growing;
pub mod mirror;
pub mod pins;
pub mod report;
pub mod shared;
pub mod sumlog;
pub mod sumshare;
