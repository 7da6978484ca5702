"""Plain functions that hold the API's logic. Each runs on the database thread pool inside its own transaction and raises ApiError for the client; servicers only translate messages."""
