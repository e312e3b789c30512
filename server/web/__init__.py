"""The web edge: the app, routes, auth, problem+json mapping, OpenAPI, and the editor
console's and public map's pages (static/)."""
