//! The admin plane end to end: `serve` on 127.0.0.1:0 over a fake
//! `Control`, driven with real clients (HTTP/1.1, HTTP/2, the generated
//! gRPC client, tonic-reflection's client, `ctl::run`). One test binary,
//! one link.

mod ctl;
mod grpc;
mod limits;
mod rest;
mod support;
