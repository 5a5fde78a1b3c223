//! Operations (placeholder).
