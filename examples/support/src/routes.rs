//! A router that remembers what it routes: every `(method, path)` added
//! through [`Routes::route`] is listed, so a test can check that each one
//! is in the OpenAPI document (and nothing is served undocumented).

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

/// The router and the `(method, path)` of every route on it. Routes are
/// added only through [`Routes::route`], so the list is exactly what the
/// router serves.
#[derive(Debug)]
pub struct Routes<S = ()> {
    /// The router.
    pub router: Router<S>,
    /// Every `(method, path)` it routes, paths in axum's syntax.
    pub list: Vec<(Method, &'static str)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    /// Routes `method` on `path` to `handler`.
    ///
    /// # Panics
    ///
    /// `method` is not one axum routes (an extension method).
    #[must_use]
    pub fn route<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }

    /// Wraps the routes added so far (layers, a fallback).
    #[must_use]
    pub fn map(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// Adds `other`'s routes.
    #[must_use]
    pub fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }

    /// Gives the routes their state.
    pub fn with_state(self, state: S) -> Routes {
        Routes {
            router: self.router.with_state(state),
            list: self.list,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_it_routes() {
        let inner = Routes::<()>::new().route(Method::POST, "/b", || async { "b" });
        let routes = Routes::new()
            .route(Method::GET, "/a", || async { "a" })
            .merge(inner)
            .map(|r| r.fallback(|| async { "none" }));
        assert_eq!(routes.list, vec![(Method::GET, "/a"), (Method::POST, "/b")]);
    }
}
