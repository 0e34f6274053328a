//! Hostile input: the agent — output names, dotenv escaping, directories it writes into.
