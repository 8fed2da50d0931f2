//! Config errors: every problem with its position and key path.

use std::fmt;
use std::path::PathBuf;

use crate::yaml::{KeyPath, Span};

/// One problem in a config file.
#[derive(Clone, Debug)]
pub struct Problem {
    pub span: Option<Span>,
    pub path: KeyPath,
    pub message: String,
}

/// All problems found in one file, reported together.
#[derive(Clone, Debug)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigErrors {
    pub fn new(file: String) -> Self {
        ConfigErrors {
            file,
            problems: Vec::new(),
        }
    }

    pub fn push(&mut self, span: Option<Span>, path: KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            span,
            path,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut problems: Vec<&Problem> = self.problems.iter().collect();
        problems.sort_by_key(|p| p.span.map(|s| (s.line, s.column)));
        for (i, problem) in problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match problem.span {
                Some(span) => write!(f, "{}:{}:{}: ", self.file, span.line, span.column)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if problem.path.0.is_empty() {
                write!(f, "{}", problem.message)?;
            } else {
                write!(f, "{}: {}", problem.path, problem.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(ConfigErrors),
}
