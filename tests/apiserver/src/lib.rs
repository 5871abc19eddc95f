//! In-memory Kubernetes API server (see README).
