//! Panics in the node (built with unwinding). A panic in one request or one agent connection
//! is caught where it happens and answered (HTTP 500 here, WebSocket close 1011 in `ws`);
//! every other connection carries on. A panic in a task the whole node depends on (the bus,
//! the shared registry) ends the node loudly instead. The hook logs every panic through
//! tracing with its place in the source, never its formatted message: that may hold
//! anything, values included. Only a message written as is in the source is logged.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

/// Exit code of a node whose vital task panicked (EX_SOFTWARE).
pub const EXIT_PANIC: i32 = 70;

/// What of a panic's payload may be logged: a message written as is in the source, else
/// nothing of it.
pub fn describe(payload: &(dyn Any + Send)) -> &'static str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if payload.is::<String>() {
        "formatted message withheld"
    } else {
        "no message"
    }
}

/// Log panics through tracing, without their formatted messages, instead of printing
/// them to stderr. Set once per process; the node sets it before it serves.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info.location();
            let thread = std::thread::current();
            tracing::error!(
                thread = thread.name().unwrap_or("unnamed"),
                file = location.map_or("unknown", |l| l.file()),
                line = location.map_or(0, |l| l.line()),
                message = describe(info.payload()),
                "panic"
            );
        }));
    });
}

/// Router middleware: a handler that panics gets the request answered with HTTP 500 and
/// the JSON error (`internal`); the panic is logged with the route, never the path itself.
pub async fn catch_request(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            tracing::error!(
                %method,
                route = route.as_ref().map_or("(no route)", MatchedPath::as_str),
                panic = describe(&*payload),
                "request handler panicked; answered 500"
            );
            super::api_error::ApiError::internal().into_response()
        }
    }
}

/// Run a task the whole node depends on. If it panics the node cannot go on as it should
/// (no more change sets from the bus, say) and would look healthy meanwhile: it says so
/// and exits with [`EXIT_PANIC`], for whatever runs it to start it again.
pub async fn vital(task: &'static str, work: impl Future<Output = ()>) {
    if let Err(payload) = AssertUnwindSafe(work).catch_unwind().await {
        tracing::error!(
            task,
            panic = describe(&*payload),
            "a task the node depends on panicked; exiting so that the node is restarted"
        );
        std::process::exit(EXIT_PANIC);
    }
}

#[cfg(test)]
mod tests;
