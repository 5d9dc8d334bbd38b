//! OS access.
