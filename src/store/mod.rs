//! Persistence: the on-disk cache with atomic commits and an LRU size bound (`disk`), and
//! single-flight coordination of cache fills (`flight`). Nothing here knows about HTTP.

pub mod disk;
pub mod flight;
pub mod mirror;
