//! Hablar's reference server.
