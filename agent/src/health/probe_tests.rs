//! Tests of the HTTP probe against real sockets on 127.0.0.1.
