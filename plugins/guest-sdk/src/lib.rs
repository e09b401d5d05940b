//! Guest-side SDK for Hyperplane plugins.
