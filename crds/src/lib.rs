//! Pier's API: the `pier.dev/v1alpha1` custom resources.
