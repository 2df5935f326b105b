import BunqAPI
import CurlHTTP
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import SessionKeeper
import SessionServer
import Timekeeping
import UnixListener

/// Decides and forwards one complete request: who may use which context, which calls may go through, the
/// session to send it in, one renewal and one retry when bunq refuses that session, and the record of it.
struct ProxyForwarder: Sendable {
    let keeper: Keeper
    let access: AccessControl
    /// `proxy.timeout`: for the rate-limit slot, bunq's answer, and a renewal bunq's refusal asks for, together.
    let timeout: Duration
    let logger: Logger
    /// The keeper's clock, which the client's rate-limit windows are kept on too: deadlines and waits share it.
    var clock: AnyClock { keeper.clock }

    /// Endpoints (the first path segment after `/v1/`) the proxy refuses: they would spend the session-server
    /// budget the renewals need (`session-server`), end the daemon's session (`session`), or create or change
    /// installations and devices behind its back. bunq's own calls for these are the daemon's.
    static let notProxied: Set<String> = ["session-server", "session", "installation", "device-server",
                                          "payment-service-provider-credential"]

    /// Headers of bunq's reply that describe the hop, not the answer: the proxy's own framing replaces them.
    static let hopByHop: Set<String> = ["connection", "keep-alive", "transfer-encoding", "content-length", "te",
                                        "trailer", "upgrade", "proxy-connection", "proxy-authenticate"]

    /// bunq's methods; anything else is answered 405 without a call.
    static let methods: Set<String> = ["GET", "POST", "PUT", "DELETE"]

    func respond(to head: HTTPRequestHead, body: ByteBuffer, peer: PeerCredentials) async -> ProxyReply {
        let clock = self.clock
        let started = clock.now
        let reply = await decide(head, body: body, context: head.headers.first(name: "X-Bunq-Context"), peer: peer,
                                 deadline: started + timeout)
        audit(head, reply, peer: peer, duration: clock.now - started)
        return reply
    }

    /// The request's audit record and metrics; every answer the proxy gives, its own errors included.
    func audit(_ head: HTTPRequestHead, _ reply: ProxyReply, peer: PeerCredentials, duration: Duration) {
        let template = EndpointTemplates.shared.label(head.uri)
        let context = head.headers.first(name: "X-Bunq-Context")
        let code = reply.errorCode?.rawValue ?? "\(reply.status)"
        Counter(label: "bunq_sessiond_proxy_requests_total",
                dimensions: [("endpoint", template), ("method", head.method.rawValue), ("code", "\(reply.status)")]).increment()
        if reply.waited > .zero || reply.errorCode == nil {
            Timer(label: "bunq_sessiond_proxy_wait_seconds").recordNanoseconds(Self.nanoseconds(reply.waited))
        }
        // The audit record: never a body, a token, a signature or a query string (the template has none).
        var metadata: Logger.Metadata = [
            "bunq.context": "\(Self.printable(context ?? "-"))", "bunq.peer_uid": "\(peer.uid)", "bunq.peer_pid": "\(peer.pid)",
            "bunq.method": "\(head.method.rawValue)", "bunq.path": "/v1/\(template)", "bunq.status": "\(reply.status)",
            "bunq.duration_ms": "\(Self.nanoseconds(duration) / 1_000_000)",
            "bunq.waited_ms": "\(Self.nanoseconds(reply.waited) / 1_000_000)",
        ]
        if reply.errorCode != nil { metadata["bunq.error"] = "\(code)" }
        logger.info("proxied", metadata: metadata)
    }

    private func decide(_ head: HTTPRequestHead, body: ByteBuffer, context: String?, peer: PeerCredentials,
                        deadline: AnyClock.Instant) async -> ProxyReply {
        guard let context, !context.isEmpty else {
            return .error(.missingContext, "Name the identity with the header X-Bunq-Context.")
        }
        guard Self.isBunqPath(head.uri) else {
            return .error(.invalidPath, "The path must be bunq's: /v1/ and segments of letters, digits, '-' and '_'.")
        }
        guard Self.methods.contains(head.method.rawValue) else {
            return .error(.methodNotAllowed, "bunq's API takes GET, POST, PUT and DELETE.")
        }
        let pathAndQuery = String(head.uri.dropFirst(4))
        guard access.mayUse(peer, context) else { return unknown(context) }
        guard keeper.sessions.entry(context) != nil else {
            // Before the stored state is read, a context the caller may use is starting, not unknown.
            if !keeper.restored.hasFired {
                return .error(.sessionUnavailable, "The daemon is starting.", retryAfter: .seconds(1))
            }
            return unknown(context)
        }
        let endpoint = pathAndQuery.prefix { $0 != "/" && $0 != "?" }
        guard !Self.notProxied.contains(String(endpoint)) else {
            return .error(.endpointNotProxied, "bunq-sessiond makes the \(endpoint) calls itself; they are not proxied.")
        }
        var callerHeaders = CurlHTTP.HTTPHeaders()
        for name in ["Content-Type", "X-Bunq-Attachment-Description"] {
            if let value = head.headers.first(name: name) { callerHeaders.add(name, value) }
        }
        let bytes = Data(body.readableBytesView)
        var waited = Duration.zero
        for attempt in 0..<2 {
            let session: ForwardingSession
            do {
                guard let current = try await keeper.forwardingSession(context) else { return await unavailable(context, waited) }
                session = current
            } catch is StoreError {
                // The context's key was never read since start and the store does not answer now.
                return await unavailable(context, waited)
            } catch {
                return unknown(context)
            }
            let response: ForwardedResponse
            do {
                response = try await keeper.bunq.forward(method: head.method.rawValue, pathAndQuery: pathAndQuery,
                                                         callerHeaders: callerHeaders, body: bytes, session: session,
                                                         deadline: deadline)
            } catch {
                var reply = Self.reply(for: error)
                reply.waited = waited
                return reply
            }
            waited += response.waited
            // bunq refused the session itself: nothing was done, so one renewal and one more try cannot do
            // anything twice. Any other answer, whatever it is, goes back as it came.
            if attempt == 0, BunqClient.refusesSession(response) {
                if let failure = await renew(context, after: session.generation, deadline: deadline) {
                    var reply = failure
                    reply.waited = waited
                    return reply
                }
                continue
            }
            return Self.passThrough(response, context: context, generation: session.generation, waited: waited)
        }
        return await unavailable(context, waited)
    }

    /// Whether the path (before any query) is `/v1/` and plain segments: no `.` or `..` (which libcurl would
    /// resolve into another endpoint than the one checked here), no percent-encoding (which a server might
    /// decode into one), no empty segment. The query string goes on as it is.
    static func isBunqPath(_ uri: String) -> Bool {
        let path = uri.prefix { $0 != "?" && $0 != "#" }
        guard path.hasPrefix("/v1/"), path.count > 4 else { return false }
        return path.dropFirst(4).split(separator: "/", omittingEmptySubsequences: false).allSatisfy { segment in
            !segment.isEmpty && segment.utf8.allSatisfy {
                ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F
            }
        }
    }

    /// Renews `context` past `generation` (the path of `session.report_invalid`), within the deadline; nil once
    /// a new session is live, else the answer to give.
    private func renew(_ context: String, after generation: Int, deadline: AnyClock.Instant) async -> ProxyReply? {
        let keeper = self.keeper
        let clock = self.clock
        let outcome: Result<Int, any Error>? = await withTaskGroup(of: Result<Int, any Error>?.self) { group in
            group.addTask {
                do { return .success(try await keeper.reportInvalid(context, generation: generation).generation) } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                try? await clock.sleep(until: deadline)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch outcome {
        case .success?:
            return nil
        case .failure(let error)?:
            logger.notice("renewal after bunq refused a proxied request failed",
                          metadata: ["bunq.context": "\(context)", "error": "\(error)"])
            return .error(.sessionUnavailable, "bunq refused the session of \(context) and renewing it failed.",
                          retryAfter: .seconds(5))
        case nil:
            return .error(.sessionUnavailable, "bunq refused the session of \(context); its renewal is still under way.",
                          retryAfter: .seconds(2))
        }
    }

    /// No session may be handed out: when the scheduler expects to try again, that is the `Retry-After`.
    private func unavailable(_ context: String, _ waited: Duration) async -> ProxyReply {
        var retryAfter = Duration.seconds(2)
        if let next = await keeper.schedule(context)?.nextRetryAt {
            retryAfter = .seconds(max(1, next.timeIntervalSinceNow.rounded(.up)))
        }
        var reply = ProxyReply.error(.sessionUnavailable, "No live session of \(context) right now.", retryAfter: retryAfter)
        reply.waited = waited
        return reply
    }

    private func unknown(_ context: String) -> ProxyReply {
        .error(.unknownContext, "Unknown context: \(Self.printable(context))")
    }

    static func reply(for error: ForwardError) -> ProxyReply {
        switch error.code {
        case .rateLimitWait:
            .error(.rateLimitWait, "bunq's rate limit for this endpoint has no slot within proxy.timeout.",
                   retryAfter: error.retryAfter)
        case .upstreamUnreachable: .error(.upstreamUnreachable, "bunq could not be reached: \(error.message)")
        case .upstreamTimeout: .error(.upstreamTimeout, "bunq did not answer within proxy.timeout.")
        case .responseNotAuthentic: .error(.responseNotAuthentic, "bunq's answer failed verification and was not passed on.")
        }
    }

    /// bunq's status, headers and body bytes as they came (hop-by-hop framing replaced), with the context and
    /// the session's generation added.
    static func passThrough(_ response: ForwardedResponse, context: String, generation: Int, waited: Duration) -> ProxyReply {
        var headers = response.headers.fields.filter { !hopByHop.contains($0.name.lowercased()) }.map { ($0.name, $0.value) }
        headers.append(("X-Bunq-Sessiond-Context", context))
        headers.append(("X-Bunq-Sessiond-Generation", "\(generation)"))
        return ProxyReply(status: response.status, headers: headers, body: ByteBuffer(bytes: response.body),
                          errorCode: nil, waited: waited)
    }

    /// A caller's text as a log field: printable ASCII only, at most 64 characters.
    static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.prefix(64).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? $0 : "?" }))
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }
}
