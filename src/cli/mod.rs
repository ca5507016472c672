//! Commands beside `serve`, thin over the library: `explain` (the gateway's decisions, printed),
//! cache operations (`cache stats`, `verify`, `gc`, ...) and `warm`.

pub mod explain;
pub mod ops;
pub mod policy;
pub mod warm;
