//! The untrusted host's end of the channel, and the loop the trusted core runs at its end.

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
