//! Pure decisions, no I/O: what happens to a connection (`egress`) and, later, to each request.

pub mod egress;
pub mod patterns;
