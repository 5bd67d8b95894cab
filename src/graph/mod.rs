//! Microsoft Graph client: the scoped user group, users, security incidents and comments.
