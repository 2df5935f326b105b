import BunqCrypto
import CurlHTTP
import Foundation
import Synchronization
import Timekeeping

/// What forwarding an application's request needs besides the request: the session to send it in and the keys
/// to sign it and to check bunq's answer.
public struct ForwardingSession: Sendable {
    /// The session token (`X-Bunq-Client-Authentication`). Secret.
    public let token: String
    /// The session's generation, for `session.report_invalid` and `X-Bunq-Sessiond-Generation`.
    public let generation: Int
    /// The installation key that signs the body.
    public let signingKey: RSAPrivateKey
    /// `signingKey`'s signature of the empty body (GET, DELETE), made once: PKCS#1 v1.5 signatures are
    /// deterministic, so it is exactly what signing again would give.
    public let emptyBodySignature: String?
    /// bunq's key for the installation, which signs bunq's replies.
    public let serverKey: RSAPublicKey

    public init(token: String, generation: Int, signingKey: RSAPrivateKey, emptyBodySignature: String? = nil,
                serverKey: RSAPublicKey) {
        self.token = token
        self.generation = generation
        self.signingKey = signingKey
        self.emptyBodySignature = emptyBodySignature
        self.serverKey = serverKey
    }
}

/// A forwarded request that produced no answer to pass on, by what the proxy tells its caller.
public struct ForwardError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The request's rate-limit slot would come later than its deadline; nothing was sent.
        case rateLimitWait = "rate_limit_wait"
        /// bunq could not be reached, or the connection broke before a complete answer.
        case upstreamUnreachable = "upstream_unreachable"
        /// bunq did not answer in time.
        case upstreamTimeout = "upstream_timeout"
        /// bunq's answer is missing its signature or the signature does not verify over its bytes.
        case responseNotAuthentic = "response_not_authentic"
    }

    public let code: Code
    /// What happened, naming the endpoint (a path template: no ids, no query).
    public let message: String
    /// With `rateLimitWait`: how long until the slot would have come.
    public let retryAfter: Duration?

    public var description: String { "\(code.rawValue): \(message)" }
}

/// bunq's answer to a forwarded request, exactly as received (its body's bytes are what bunq signed), and how
/// long the request waited for its rate-limit slot.
public struct ForwardedResponse: Sendable {
    public let status: Int
    public let headers: HTTPHeaders
    public let body: Data
    public let waited: Duration
}

/// Path templates as metric labels and log fields: ids become `{id}`, and at most `capacity` distinct templates
/// are named, so callers inventing paths cannot grow the label set without bound (the rest are `other`).
public final class EndpointTemplates: Sendable {
    public static let shared = EndpointTemplates()
    private let known = Mutex<Set<String>>([])
    let capacity: Int

    init(capacity: Int = 256) {
        self.capacity = capacity
    }

    /// `user/{id}/monetary-account` for `/v1/user/42/monetary-account?count=10`: the query is dropped, and a
    /// segment with a digit in it (a number, a UUID) or anything but `a-z`, `-` and `_` becomes `{id}`.
    public static func template(_ path: String) -> String {
        var relative = Substring(path.prefix { $0 != "?" && $0 != "#" })
        if relative.hasPrefix("/") { relative = relative.dropFirst() }
        if relative.hasPrefix("v1/") { relative = relative.dropFirst(3) }
        return relative.split(separator: "/", omittingEmptySubsequences: false).map { segment in
            segment.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F } && !segment.isEmpty
                ? String(segment) : "{id}"
        }.joined(separator: "/")
    }

    /// The label for `path`: its template while fewer than `capacity` are known, else `other`.
    public func label(_ path: String) -> String {
        let template = Self.template(path)
        return known.withLock { known in
            if known.contains(template) { return template }
            guard known.count < capacity else { return "other" }
            known.insert(template)
            return template
        }
    }
}

extension BunqClient {
    /// Forwards an application's call in `session`: bunq's headers added (a fresh request id, the token, the
    /// signature over exactly `body`), the caller's `Content-Type` and attachment description kept, sent within
    /// the daemon's rate limits by `deadline`; bunq's answer verified over its raw body (every 2xx must be
    /// signed; an error that is signed must verify) and returned unchanged.
    ///
    /// `pathAndQuery` is relative to the API base (`user/42/monetary-account?count=10`). A slot that would come
    /// after `deadline` is not taken: `rateLimitWait`, with how long it would have been.
    public func forward(method: String, pathAndQuery: String, callerHeaders: HTTPHeaders, body: Data,
                        session: ForwardingSession, deadline: AnyClock.Instant) async throws(ForwardError) -> ForwardedResponse {
        let endpointKey = BunqRateLimiter.endpointKey(pathAndQuery)
        let label = EndpointTemplates.shared.label(pathAndQuery)
        let endpoint = "\(method) \(label)"
        var headers: HTTPHeaders = [
            "User-Agent": BunqSessiondVersion.userAgent,
            "Cache-Control": "no-cache",
            "X-Bunq-Client-Request-Id": UUID().uuidString.lowercased(),
            "X-Bunq-Geolocation": "0 0 0 0 NL",
            "X-Bunq-Language": "en_US",
            "X-Bunq-Region": "nl_NL",
            "X-Bunq-Client-Authentication": session.token,
        ]
        for name in ["Content-Type", "X-Bunq-Attachment-Description"] {
            if let value = callerHeaders[name] { headers.add(name, value) }
        }
        do {
            let signature = body.isEmpty ? session.emptyBodySignature : nil
            headers.add("X-Bunq-Client-Signature", try signature ?? session.signingKey.base64Signature(for: body))
        } catch {
            throw ForwardError(code: .upstreamUnreachable, message: "\(endpoint): the request could not be signed", retryAfter: nil)
        }

        let clock = rateLimiter.clock
        let queued = clock.now
        // A slot is worth taking only with time left for bunq's answer: a quarter of the time, at most 500 ms.
        let answerAllowance = min(.milliseconds(500), (deadline - queued) / 4)
        let notAfter = deadline - answerAllowance
        guard var slot = await rateLimiter.reserve(method: method, endpoint: endpointKey, notAfter: notAfter) else {
            let next = await rateLimiter.nextSlot(method: method, endpoint: endpointKey)
            throw ForwardError(code: .rateLimitWait, message: "\(endpoint): no rate-limit slot before the deadline",
                               retryAfter: max(.seconds(1), next - clock.now))
        }
        // At its time the slot is checked again against the calls before it as they actually went (a loaded
        // machine runs them late): it may have to wait longer, up to the same limit.
        departing: while slot.limited {
            if slot.at > clock.now {
                do {
                    try await clock.sleep(until: slot.at)
                } catch {
                    throw ForwardError(code: .upstreamUnreachable, message: "\(endpoint): cancelled", retryAfter: nil)
                }
            }
            switch await rateLimiter.depart(slot, notAfter: notAfter) {
            case .go:
                break departing
            case .wait(let later):
                slot = later
            case .tooLate(let next):
                throw ForwardError(code: .rateLimitWait, message: "\(endpoint): no rate-limit slot before the deadline",
                                   retryAfter: max(.seconds(1), next - clock.now))
            }
        }
        let waited = clock.now - queued
        let remaining = deadline - clock.now
        guard remaining > .milliseconds(1) else {
            throw ForwardError(code: .upstreamTimeout, message: "\(endpoint): no time left for bunq's answer", retryAfter: nil)
        }
        let started = clock.now
        let response: HTTPResponse
        do {
            response = try await http.execute(HTTPRequest(method: method, url: endpoints.apiBaseURL + pathAndQuery,
                                                          headers: headers, body: body, timeout: remaining))
        } catch let error as HTTPClientError {
            await rateLimiter.settle(slot)
            BunqMetrics.request(endpoint: label, method: method, code: "error", duration: clock.now - started)
            let code: ForwardError.Code = error.kind == .timeout || error.kind == .connectTimeout ? .upstreamTimeout : .upstreamUnreachable
            throw ForwardError(code: code, message: "\(endpoint): \(error.message)", retryAfter: nil)
        } catch {
            await rateLimiter.settle(slot)
            throw ForwardError(code: .upstreamUnreachable, message: "\(endpoint): \(error)", retryAfter: nil)
        }
        await rateLimiter.settle(slot)
        BunqMetrics.request(endpoint: label, method: method, code: "\(response.status)", duration: clock.now - started)
        if response.status == 429 {
            BunqMetrics.rateLimited(endpoint: label)
            await rateLimiter.rateLimited(method: method, endpoint: endpointKey)
        }
        if let signature = response.headers["X-Bunq-Server-Signature"] {
            guard (try? session.serverKey.verify(base64Signature: signature, for: response.body)) != nil else {
                throw ForwardError(code: .responseNotAuthentic,
                                   message: "\(endpoint): bunq's signature does not verify over the reply", retryAfter: nil)
            }
        } else if (200..<300).contains(response.status) {
            throw ForwardError(code: .responseNotAuthentic,
                               message: "\(endpoint): the reply carries no X-Bunq-Server-Signature", retryAfter: nil)
        }
        return ForwardedResponse(status: response.status, headers: response.headers, body: response.body, waited: waited)
    }

    /// Whether bunq's answer says the session is gone (401/403 "Insufficient authentication/authorisation"):
    /// the request was refused, so renewing and sending it once more cannot do anything twice.
    public static func refusesSession(_ response: ForwardedResponse) -> Bool {
        guard response.status == 401 || response.status == 403 else { return false }
        let message = BunqErrorBody.description(in: response.body) ?? ""
        return BunqAPIError.isDeadSessionText(message) && !message.contains("credentials are incorrect")
    }
}
