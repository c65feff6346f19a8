"""The relay adapter streams a message's content block by block (RFC 5321 §4.5.3.2.5: the client's timeout
runs per data block, then §4.5.3.2.6 for the reply to the final "."), over a fake transport and clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailsuite.relay.client import ClientConfig, ClientEngine, MessageResult, OutboundMessage, Recipient
from mailsuite.relay.deliver import SMTPClientProtocol, phase_timeouts
from mailsuite.relay.dotstuff import stuff

EHLO = b"250-mx.example.net hello\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
BLOCK = 1000
BODY = b"Subject: big\r\n\r\n" + b"".join(b".line %05d of a long message\r\n" % i for i in range(700))


def session(block_timeout: float = 180.0, end_timeout: float = 600.0):
    """A protocol past the 354 of one message: (protocol, transport, clock, results)."""
    engine = ClientEngine(ClientConfig("me.here.org", starttls="off", chunk_size=BLOCK))
    clock = Clock()
    proto = SMTPClientProtocol(engine, clock, None, phase_timeouts(data_block=block_timeout,
                                                                   data_end=end_timeout))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"220 mx.example.net ESMTP\r\n" + EHLO)
    assert proto.ready.called
    results: list[MessageResult] = []
    proto.send(OutboundMessage("a@here.org", (Recipient("b@there.net"),), BODY)).addCallback(results.append)
    proto.dataReceived(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
    return proto, transport, clock, results


def test_a_slow_but_moving_body_is_never_cut_off():
    proto, transport, clock, results = session()
    assert transport.producer is not None and not transport.streaming     # a pull producer
    blocks = 1
    while transport.producer is not None:
        clock.advance(170)              # the network takes a block every 170 s: 3 minutes never pass
        assert not transport.disconnecting and not results
        transport.producer.resumeProducing()
        blocks += 1
    assert blocks > len(BODY) // BLOCK and clock.seconds() > 600        # far longer than data_end_timeout
    assert transport.value().endswith(stuff(BODY))
    assert proto.awaiting_end_of_data
    clock.advance(599)                  # §4.5.3.2.6: ten minutes for the reply, counted from the last block
    assert not results
    proto.dataReceived(b"250 2.0.0 queued as X\r\n")
    (result,) = results
    assert result.reply.code == 250 and [r.code for _rc, r in result.outcomes] == [250]


def test_a_stalled_body_times_out_after_the_block_wait():
    proto, transport, clock, results = session(block_timeout=180.0)
    assert not proto.awaiting_end_of_data       # still sending: a stopping relay may abort this one
    clock.advance(179)
    assert not results
    clock.advance(1)
    (result,) = results
    assert result.reply.code == 421 and "timeout waiting for the server (data-block)" in str(result.reply)
    assert transport.disconnecting


def test_no_reply_to_the_final_dot_times_out_after_the_end_wait():
    proto, transport, clock, results = session(end_timeout=600.0)
    while transport.producer is not None:
        transport.producer.resumeProducing()
    clock.advance(599)
    assert not results
    clock.advance(1)
    (result,) = results
    assert "timeout waiting for the server (data-end)" in str(result.reply)


def test_bytes_after_the_body_wait_for_it():
    """A reply that comes while the content is still going out (a server may answer early) finishes the
    transaction; whatever the engine sends next goes after the content, never into it."""
    proto, transport, clock, results = session()
    proto.dataReceived(b"554 5.6.0 no thanks\r\n")                     # before the content is out
    (result,) = results
    assert result.reply.code == 554
    quitting = proto.quit()
    assert not quitting.called and b"QUIT" not in transport.value()     # held behind the content
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert transport.value().endswith(stuff(BODY) + b"QUIT\r\n")


def test_connection_lost_while_sending_stops_the_stream():
    proto, transport, clock, results = session()
    producer = transport.producer
    proto.connectionLost()
    sent = transport.value()
    producer.resumeProducing()                   # a late pull after the loss writes nothing
    assert transport.value() == sent
    (result,) = results
    assert result.reply.code == 421


def test_a_next_message_sent_from_a_callback_goes_after_the_content():
    """A server that answers the end of data in the same read as its 354 (before any content arrived) ends
    the transaction at once; the next message, sent from that result's callback, queues behind the content
    instead of cutting into it."""
    engine = ClientEngine(ClientConfig("me.here.org", starttls="off", chunk_size=BLOCK))
    clock = Clock()
    proto = SMTPClientProtocol(engine, clock, None, phase_timeouts())
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"220 mx.example.net ESMTP\r\n" + EHLO)
    second = OutboundMessage("a@here.org", (Recipient("c@there.net"),), b"Subject: 2\r\n\r\nsecond\r\n")
    results: list[MessageResult] = []

    def next_message(result: MessageResult) -> None:
        results.append(result)
        proto.send(second).addCallback(results.append)
    proto.send(OutboundMessage("a@here.org", (Recipient("b@there.net"),), BODY)).addCallback(next_message)
    proto.dataReceived(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n250 2.0.0 early\r\n")
    assert [r.reply.code for r in results] == [250]
    while transport.producer is not None:
        transport.producer.resumeProducing()
    out = transport.value()
    body_at = out.index(stuff(BODY))
    assert out.index(b"MAIL FROM:") < body_at                          # the first message's envelope
    assert b"MAIL FROM:" in out[body_at:] and out.endswith(b"RCPT TO:<c@there.net>\r\nDATA\r\n")
