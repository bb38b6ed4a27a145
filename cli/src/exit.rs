//! Expected failures and their documented exit codes (see `ccfleet --help`).

/// A failure the CLI reports in one line and maps to an exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1.
    Unexpected(String),
    /// Exit 2.
    Usage(String),
    /// Exit 3.
    Unreachable(String),
    /// Exit 4.
    Refused(String),
    /// Exit 5.
    Unsupported(String),
    /// Exit 6: a followed rollout halted.
    Halted(String),
    /// Exit 7: a followed rollout was aborted.
    Aborted(String),
    /// Exit 8: a rollout in which no host had anything to do (every app
    /// skipped, held back or already at the target).
    NothingToDo(String),
}

impl Failure {
    pub fn code(&self) -> i32 {
        match self {
            Failure::Unexpected(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::Refused(_) => 4,
            Failure::Unsupported(_) => 5,
            Failure::Halted(_) => 6,
            Failure::Aborted(_) => 7,
            Failure::NothingToDo(_) => 8,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Unexpected(message)
            | Failure::Usage(message)
            | Failure::Unreachable(message)
            | Failure::Refused(message)
            | Failure::Unsupported(message)
            | Failure::Halted(message)
            | Failure::Aborted(message)
            | Failure::NothingToDo(message) => message,
        }
    }

    pub fn exit(self) -> ! {
        eprintln!("error: {}", crate::output::printable(self.message()));
        std::process::exit(self.code())
    }

    /// Classifies a gRPC status from the server at `url`.
    pub fn from_status(url: &str, status: tonic::Status) -> Failure {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => {
                Failure::Unreachable(format!("the ccfleet server at {url} did not answer: {message}"))
            }
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted => Failure::Refused(format!("the server refused the request: {message}")),
            Code::Unimplemented => Failure::Unsupported(format!("the server does not support this: {message}")),
            _ => Failure::Unexpected(format!("the server failed: {message}")),
        }
    }
}

/// The innermost error's message: for a refused connection that is the
/// operating system's "Connection refused", not tonic's "transport error".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
