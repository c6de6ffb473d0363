"""The OCI Distribution protocol: paths, errors, ranges, media types and an upstream client."""
