//! The untrusted host's end of the channel, and the loop the trusted core runs at its end.
//!
//! Where the core runs is a configuration (`[confidential] partition`), not a second code
//! base: [`Core`] is either the core as its own confined process behind the typed channel
//! (Soteria's SML-2), or the same [`TrustedCore`] inside the host's process, when the whole
//! host, coordinator included, is in the trusted part (SML-1).

use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use crate::core::TrustedCore;
use crate::protocol::{CoreConfig, CoreReply, CoreRequest, FrameError, read_frame, write_frame};

/// The trusted core running as its own process, spoken to over its stdin and stdout.
#[derive(Debug)]
pub struct CoreProcess {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl CoreProcess {
    /// Starts `command` (the core) and sends it its configuration as the first frame.
    pub fn spawn(mut command: Command, config: &CoreConfig) -> Result<Self, FrameError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(FrameError::Malformed("the core has no pipes".into()));
        };
        let mut input = BufWriter::new(stdin);
        write_frame(&mut input, config)?;
        Ok(Self {
            child,
            input,
            output: BufReader::new(stdout),
        })
    }

    /// One request and its reply.
    pub fn call(&mut self, request: &CoreRequest) -> Result<CoreReply, FrameError> {
        write_frame(&mut self.input, request)?;
        read_frame(&mut self.output)?.ok_or_else(|| {
            FrameError::Malformed("the core exited without answering (see its log)".into())
        })
    }

    /// Closes the channel and waits for the core to exit.
    pub fn finish(mut self) -> Result<ExitStatus, FrameError> {
        drop(self.input);
        Ok(self.child.wait()?)
    }
}

/// The trusted core as the host reaches it.
pub enum Core {
    /// Its own confined process, behind the typed channel (SML-2).
    Process(CoreProcess),
    /// In this process (SML-1): everything is in the trusted part, and requests are still the
    /// same typed values.
    InProcess(Box<TrustedCore>),
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Core::Process(p) => write!(f, "Core::Process({})", p.child.id()),
            Core::InProcess(c) => write!(f, "Core::InProcess({c:?})"),
        }
    }
}

impl Core {
    /// One request and its reply.
    pub fn call(&mut self, request: &CoreRequest) -> Result<CoreReply, FrameError> {
        match self {
            Core::Process(p) => p.call(request),
            Core::InProcess(c) => Ok(c.handle(request.clone())),
        }
    }

    /// Ends the core: closes the channel and waits for the process. `Err` names a process
    /// that did not exit cleanly.
    pub fn finish(self) -> Result<(), FrameError> {
        match self {
            Core::Process(p) => {
                let status = p.finish()?;
                if status.success() {
                    Ok(())
                } else {
                    Err(FrameError::Malformed(format!(
                        "the trusted core exited with {status} (see its log)"
                    )))
                }
            }
            Core::InProcess(_) => Ok(()),
        }
    }
}

/// The core's loop: answers each request until the host closes the channel. Returns how many
/// requests it handled.
pub fn serve(
    core: &mut TrustedCore,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<u64, FrameError> {
    let mut handled = 0;
    while let Some(request) = read_frame::<CoreRequest>(input)? {
        let reply = core.handle(request);
        write_frame(output, &reply)?;
        handled += 1;
    }
    Ok(handled)
}
