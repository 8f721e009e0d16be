//! What crosses the host/guest seam, decoded from hostile bytes: agent
//! frames both ways (JSON envelopes), stdio frames, husk-vmm's event lines,
//! and the boot parameters the agent parses from its kernel command line.
//! A decoded message must validate or be refused, never panic.
#![no_main]

use husk_proto::agent::{Envelope, Request, Response};
use husk_proto::boot::BootParams;
use husk_proto::frame::read_frame;
use husk_proto::stdio::Frame;
use husk_proto::vm::VmmEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Envelope {
        body: Request::Create(c),
        ..
    }) = read_frame::<_, Envelope<Request>>(&mut &data[..])
    {
        let _ = c.validate();
    }
    let _ = read_frame::<_, Envelope<Response>>(&mut &data[..]);
    let mut stream = data;
    while let Ok(Some(_)) = Frame::read_from(&mut stream) {}
    let _ = Frame::decode(data);
    let text = String::from_utf8_lossy(data);
    let _ = VmmEvent::from_line(&text);
    if let Ok(p) = BootParams::parse(&text) {
        // What parses renders, and renders back to the same parameters.
        let again = p.render().expect("parsed parameters render");
        assert_eq!(
            BootParams::parse(&again).expect("rendered parameters parse"),
            p
        );
    }
});
