//! Hostile input: the node's HTTP front door — slow and oversized requests, tokens, errors.
