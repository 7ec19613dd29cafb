//! Identity of shared objects, for cache and pool keys.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// An `Arc` compared and hashed by address. Sound as a cache key because the
/// key holds the `Arc`, so the address cannot be reused while it is cached.
#[derive(Debug)]
pub struct ByAddress<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Clone for ByAddress<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> PartialEq for ByAddress<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: ?Sized> Eq for ByAddress<T> {}

impl<T: ?Sized> Hash for ByAddress<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}
