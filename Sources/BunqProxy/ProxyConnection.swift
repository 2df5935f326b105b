import NIOCore
import NIOHTTP1
import SessionServer
import UnixListener

/// One client connection's task: reads each request whole (head and body, within `proxy.max_body_bytes`),
/// answers it, and goes on while the client keeps the connection alive. Requests are answered one at a time and
/// in order (HTTP/1.1 pipelining: the pipeline handler holds the next request back until this one's answer is
/// written).
struct ProxyConnection {
    let channel: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
    let peer: PeerCredentials
    let forwarder: ProxyForwarder
    let maxBodyBytes: Int

    func run() async {
        try? await channel.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let next):
                    head = next
                    body.clear()
                    if let length = next.headers.first(name: "Content-Length").flatMap({ Int($0) }), length > maxBodyBytes {
                        // Refused before the body is read; the connection cannot go on without reading it.
                        try await refuse(next, to: outbound)
                        return
                    }
                case .body(var chunk):
                    guard let current = head else { continue }
                    guard body.readableBytes + chunk.readableBytes <= maxBodyBytes else {
                        try await refuse(current, to: outbound)
                        return
                    }
                    body.writeBuffer(&chunk)
                case .end:
                    guard let request = head else { continue }
                    head = nil
                    let reply = await forwarder.respond(to: request, body: body, peer: peer)
                    body = ByteBuffer()
                    try await write(reply, version: request.version, keepAlive: request.isKeepAlive, to: outbound)
                    if !request.isKeepAlive { return }
                }
            }
        }
    }

    /// Answers 413 (audited like every answer), and the connection ends.
    private func refuse(_ head: HTTPRequestHead, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        let reply = ProxyReply.error(.bodyTooLarge, "The request body is larger than proxy.max_body_bytes (\(maxBodyBytes) bytes).")
        forwarder.audit(head, reply, peer: peer, duration: .zero)
        try await write(reply, version: head.version, keepAlive: false, to: outbound)
    }

    private func write(_ reply: ProxyReply, version: HTTPVersion, keepAlive: Bool,
                       to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        try await outbound.write(contentsOf: [
            .head(reply.head(version: version, keepAlive: keepAlive)), .body(.byteBuffer(reply.body)), .end(nil),
        ])
    }
}
