//! What every domain error says about itself: whose fault it is (the exit status) and
//! what to do (a hint). A leaf module: domain modules depend on it, and only the renderer
//! in `error` depends on the domains.

/// Which side of the line an error falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Bad input from the user or the repository.
    User,
    /// The machine, the network, or us.
    Environment,
}

/// Implemented by every domain error so the renderer can classify it and add a hint.
pub trait Diagnostic: std::error::Error {
    /// Whose fault it is; decides the exit status.
    fn blame(&self) -> Blame;
    /// One line telling the user what to do next, if there is something useful to say.
    fn hint(&self) -> Option<String> {
        None
    }
}
