//! Pure decisions, no I/O: what happens to a connection (`egress`) and, later, to each request.

pub mod classify;
pub mod egress;
pub mod patterns;
pub mod route;
