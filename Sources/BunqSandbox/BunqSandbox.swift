import BunqCrypto
import DynamicJSON
import Foundation
import NIOHTTP1
import Synchronization

/// A local emulator of the bunq API: the calls bunq-sessiond and bunq's SDKs make, with real RSA signatures both
/// ways, server-side session expiry, bunq's rate limits and error replies, plus an admin API under `/_sandbox/` for
/// tests (stats, injected faults, revocations, OAuth approvals).
public final class BunqSandbox: Sendable {
    public let configuration: SandboxConfiguration
    /// bunq's server keys, given to installations in turn (shared by every emulator in the process).
    private let serverKeys = ServerKeyRing.shared
    let store: Mutex<SandboxStore>
    private let limiter: Mutex<SandboxRateLimiter>
    let faults = Mutex((nextId: 1, rules: [FaultRule]()))
    /// Callbacks to notification filters' targets, delivered while `run` serves.
    let callbacks: CallbackDelivery

    /// An emulator with no users yet; call `run` to serve. Server keys are generated when installations need them.
    public init(configuration: SandboxConfiguration = SandboxConfiguration()) {
        self.configuration = configuration
        var limits = SandboxRateLimiter()
        limits.scale = configuration.rateLimitScale
        limiter = Mutex(limits)
        store = Mutex(SandboxStore(configuration: configuration, serverKeys: serverKeys))
        callbacks = CallbackDelivery(retryInterval: .milliseconds(Int64((configuration.callbackRetrySeconds * 1_000).rounded())))
    }

    /// Serves until the calling task is cancelled, reporting the bound port through `onListening` first, and
    /// delivers callbacks meanwhile.
    public func run(onListening: @Sendable (Int) async throws -> Void = { _ in }) async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [callbacks] in await callbacks.run() }
            defer { group.cancelAll() }
            try await HTTPServerCore.serve(host: configuration.host, port: configuration.port,
                                           handler: { [self] in await respond(to: $0) }, onBound: onListening)
        }
    }

    /// Starts an emulator on a free loopback port (unless the configuration names one), runs `body` with its
    /// base URL `http://127.0.0.1:PORT`, then stops it.
    public static func withRunning<T: Sendable>(
        _ configuration: SandboxConfiguration = SandboxConfiguration(),
        _ body: @escaping @Sendable (_ baseURL: String) async throws -> T
    ) async throws -> T {
        let sandbox = BunqSandbox(configuration: configuration)
        return try await withBoundServer(of: { onBound in try await sandbox.run(onListening: onBound) }) { port in
            try await body("http://\(configuration.host):\(port)")
        }
    }

    // MARK: - The pipeline

    func respond(to request: ServerRequest) async -> ServerResponse? {
        var headers: [(String, String)] = [("X-Bunq-Client-Response-Id", UUID().uuidString.lowercased())]
        if let requestId = request.headers.first(name: "X-Bunq-Client-Request-Id") {
            headers.append(("X-Bunq-Client-Request-Id", requestId))
        }
        let path = request.path
        if path.hasPrefix("/_sandbox/") { return admin(request, headers) }
        if request.method == "GET", path == "/auth" { return authorizePage(request, headers) }

        let endpointName: String
        let route: Route?
        var pathIds: [Int] = []
        if request.method == "POST", path == "/v1/token" {
            endpointName = "POST /v1/token"
            route = nil
        } else if let (found, ids) = Route.all.lazy.compactMap({ r in r.method == request.method ? r.match(path).map { (r, $0) } : nil }).first {
            endpointName = found.name
            route = found
            pathIds = ids
        } else {
            let known = Route.all.contains { $0.match(path) != nil }
            return reply(known ? SandboxError(405, "Method not allowed.") : .notFound("Route"), headers, signedBy: nil)
        }
        store.withLock { $0.stats.requests[endpointName, default: 0] += 1 }

        // Injected faults, then bunq's rate limits.
        var corruptSignature = false
        for action in takeFaults(for: endpointName) {
            switch action {
            case .delay(let milliseconds): try? await Task.sleep(for: .milliseconds(milliseconds))
            case .drop: return nil
            case .status(let status, let message): return reply(SandboxError(status, message), headers, signedBy: nil)
            case .raw(let status, let contentType, let body):
                // What a load balancer or a proxy in front of bunq sends: not bunq's envelope, never signed.
                return ServerResponse(status: status, headers: headers + (contentType.map { [("Content-Type", $0)] } ?? []),
                                      body: Array(body.utf8))
            case .badSignature: corruptSignature = true
            }
        }
        // Rate limits count on the wall clock without the offset; everything bunq reports or expires on the
        // emulator's own clock.
        let now = configuration.now
        let wall = configuration.wallClock()
        if configuration.rateLimits,
           let message = limiter.withLock({ $0.admit(ip: request.remoteIP, method: request.method, endpoint: endpointName, now: wall) }) {
            store.withLock { $0.stats.rateLimited += 1 }
            return reply(SandboxError(429, message), headers, signedBy: nil)
        }

        guard let route else { return tokenExchange(request, headers, now: now) }
        if endpointName == "POST /v1/installation" {
            // The key this installation will take exists before the store hands it out.
            let ordinal = store.withLock { $0.stats.installations }
            do {
                try await serverKeys.prepare(ordinal + 1)
            } catch {
                return reply(SandboxError(500, "The server key could not be generated."), headers, signedBy: nil)
            }
        }
        let (outcome, installation, owed) = store.withLock { store in
            let (outcome, installation) = Self.call(route, request, pathIds: pathIds, now: now, store: &store)
            return (outcome, installation, store.takeCallbacks())
        }
        if !owed.isEmpty { callbacks.enqueue(owed) }
        switch outcome {
        case .success(let json):
            return reply(status: 200, body: json.serialized, headers, signedBy: installation, corrupt: corruptSignature)
        case .failure(let error):
            return reply(error, headers, signedBy: installation, corrupt: corruptSignature)
        }
    }

    /// Headers, authentication, signature check, request-id check and the handler, under the store's lock.
    private static func call(_ route: Route, _ request: ServerRequest, pathIds: [Int], now: Date,
                             store: inout SandboxStore) -> (Result<BunqJSON, SandboxError>, Installation?) {
        let configuration = store.configuration
        let authentication = request.headers.first(name: "X-Bunq-Client-Authentication")
        let signature = request.headers.first(name: "X-Bunq-Client-Signature")
        // The swagger marks User-Agent required on every call, and describes Cache-Control as "required for all
        // signed requests" (DESCRIPTION.md: for all requests; the swagger wins, the SDKs send both anyway).
        if !configuration.lenientHeaders {
            if request.headers.first(name: "User-Agent")?.isEmpty ?? true {
                return (.failure(.missingHeader("User-Agent")), nil)
            }
            if signature != nil, request.headers.first(name: "Cache-Control")?.isEmpty ?? true {
                return (.failure(.missingHeader("Cache-Control")), nil)
            }
        }
        var installation: Installation?
        var session: Session?
        switch route.auth {
        case .none:
            break
        case .installation:
            guard let token = authentication, let found = store.installations[token] else {
                return (.failure(.insufficientAuthentication), nil)
            }
            installation = found
        case .session:
            guard let token = authentication, let found = store.sessions[token], found.isLive(at: now) else {
                return (.failure(store.deadSessionAnswer()), nil)
            }
            // A session works only from the addresses its device permits.
            guard store.devices[found.deviceId]?.permits(request.remoteIP) == true else {
                return (.failure(.credentialsIncorrect), store.installationsById[found.installationId])
            }
            if let extra = configuration.sessionExtensionSeconds, found.expiresAt.timeIntervalSince(now) < 30 {
                store.sessions[token]?.expiresAt = found.expiresAt.addingTimeInterval(TimeInterval(extra))
            }
            session = store.sessions[token]
            installation = store.installationsById[found.installationId]
        }
        if let installation {
            if let signature {
                do {
                    try installation.clientPublicKey.verify(base64Signature: signature, for: request.body)
                } catch {
                    store.stats.rejectedSignatures += 1
                    return (.failure(.signatureInvalid), installation)
                }
            } else if route.signatureRequired {
                store.stats.rejectedSignatures += 1
                return (.failure(.signatureRequired), installation)
            }
            if !configuration.allowRequestIdReuse, let requestId = request.headers.first(name: "X-Bunq-Client-Request-Id"),
               !store.requestIds[installation.id, default: RequestIdLog()].record(requestId) {
                store.stats.requestIdsRejected += 1
                return (.failure(.requestIdReused), installation)
            }
        }
        let body: [String: JSONValue]
        if request.body.isEmpty {
            body = [:]
        } else if let object = JSONValue(parsing: Data(request.body))?.object {
            body = object
        } else {
            return (.failure(.badRequest("The request body is not a JSON object.")), installation)
        }
        let context = CallContext(body: body, query: queryParameters(request.uri), pathIds: pathIds,
                                  installation: installation, session: session, remoteIP: request.remoteIP, now: now)
        do {
            return (.success(try route.handler(&store, context)), installation)
        } catch {
            return (.failure(error), installation)
        }
    }

    private func takeFaults(for endpoint: String) -> [FaultRule.Action] {
        faults.withLock { state in
            var actions: [FaultRule.Action] = []
            for index in state.rules.indices where state.rules[index].matches(endpoint) {
                guard Double.random(in: 0..<1) < state.rules[index].probability else { continue }
                actions.append(state.rules[index].action)
                if let remaining = state.rules[index].remaining { state.rules[index].remaining = remaining - 1 }
            }
            state.rules.removeAll { $0.remaining == 0 }
            // Delays first, then at most one answering action.
            let delays = actions.filter { if case .delay = $0 { true } else { false } }
            return delays + actions.filter { if case .delay = $0 { false } else { true } }.prefix(1)
        }
    }

    // MARK: - Replies

    private func reply(_ error: SandboxError, _ headers: [(String, String)], signedBy installation: Installation?,
                       corrupt: Bool = false) -> ServerResponse {
        reply(status: error.status, body: BunqJSON.error(error.description).serialized, headers,
              signedBy: installation, corrupt: corrupt)
    }

    /// A JSON reply, signed over its exact body bytes with the installation's server key when there is one.
    private func reply(status: Int, body: [UInt8], _ headers: [(String, String)], signedBy installation: Installation?,
                       corrupt: Bool = false) -> ServerResponse {
        var headers = headers
        headers.append(("Content-Type", "application/json"))
        if let installation, var signature = try? serverKeys.signature(at: installation.serverKeyIndex, for: body) {
            if corrupt { signature[signature.count / 2] ^= 0x5A }
            headers.append(("X-Bunq-Server-Signature", Data(signature).base64EncodedString()))
        }
        return ServerResponse(status: status, headers: headers, body: body)
    }

    private func authorizePage(_ request: ServerRequest, _ headers: [(String, String)]) -> ServerResponse {
        let query = Self.queryParameters(request.uri)
        let outcome = store.withLock { $0.authorize(query: query, now: configuration.now) }
        switch outcome {
        case .redirect(let location):
            return ServerResponse(status: 302, headers: headers + [("Location", location)])
        case .refused(let reason):
            return ServerResponse(status: 400, headers: headers + [("Content-Type", "text/plain; charset=utf-8")],
                                  body: Array("bunq sandbox: authorization refused: \(reason)\n".utf8))
        }
    }

    private func tokenExchange(_ request: ServerRequest, _ headers: [(String, String)], now: Date) -> ServerResponse {
        var parameters = Self.queryParameters(request.uri)
        // A form body is accepted too (a 2025 doc page shows one).
        if !request.body.isEmpty {
            for (key, value) in Self.formParameters(Substring(String(decoding: request.body, as: UTF8.self))) {
                parameters[key] = value
            }
        }
        let (status, body) = store.withLock { $0.exchangeCode(parameters, now: now) }
        return ServerResponse(status: status, headers: headers + [("Content-Type", "application/json")],
                              body: body.serialized)
    }

    /// The query parameters of a request target, percent-decoded; the first of repeated names wins.
    static func queryParameters(_ uri: String) -> [String: String] {
        guard let question = uri.firstIndex(of: "?") else { return [:] }
        return formParameters(uri[uri.index(after: question)...])
    }

    /// `application/x-www-form-urlencoded` pairs, percent-decoded (`+` is a space).
    static func formParameters(_ text: Substring) -> [String: String] {
        var parameters: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (text: Substring) in
                text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(text)
            }
            guard let name = parts.first.map(decode), parameters[name] == nil else { continue }
            parameters[name] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return parameters
    }
}
