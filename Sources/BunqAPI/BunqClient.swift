import BunqCrypto
import CurlHTTP
import DynamicJSON
import Foundation
import Timekeeping

/// What calls made with an installation need: its key (to sign), its token, and bunq's key for it (to verify).
public struct InstallationContext: Sendable {
    public let key: RSAPrivateKey
    public let token: String
    public let serverKey: RSAPublicKey

    public init(key: RSAPrivateKey, token: String, serverKey: RSAPublicKey) {
        self.key = key
        self.token = token
        self.serverKey = serverKey
    }
}

/// A client of the bunq API: signed requests, verified replies, classified errors, our side of the rate limits.
///
/// Every call either returns a verified, decoded result or throws `BunqAPIError` (or `CancellationError`).
public final class BunqClient: Sendable {
    public let endpoints: BunqEndpoints
    public let rateLimiter: BunqRateLimiter
    /// What the client's waits and durations are measured on: its limiter's clock.
    public var clock: AnyClock { rateLimiter.clock }
    /// The wall clock a session's expiry is anchored to (when its request was sent).
    public let wallClock: @Sendable () -> Date
    /// Lifetime of a PSD2 provider's first session (bunq: one hour); its user object reports the full timeout.
    public let psd2FirstSessionTimeout: Int
    /// `permitted_ips` of the devices this client registers (`"*"`: any address).
    public let permittedIPs: [String]
    let http: HTTPClient

    /// `sourceAddress`: the local address calls leave from (an egress IP of this host); nil: the kernel's choice.
    public init(endpoints: BunqEndpoints, rateLimiter: BunqRateLimiter, psd2FirstSessionTimeout: Int = 3_600,
                permittedIPs: [String] = ["*"], sourceAddress: String? = nil,
                connectTimeout: Duration = .seconds(10), timeout: Duration = .seconds(30),
                wallClock: @escaping @Sendable () -> Date = Date.init) throws {
        self.endpoints = endpoints
        self.wallClock = wallClock
        self.rateLimiter = rateLimiter
        self.psd2FirstSessionTimeout = psd2FirstSessionTimeout
        self.permittedIPs = permittedIPs
        var configuration = HTTPClient.Configuration(connectTimeout: connectTimeout, timeout: timeout,
                                                     caFile: endpoints.caFile, maxResponseBytes: 4 << 20)
        configuration.localAddress = sourceAddress
        self.http = try HTTPClient(configuration: configuration)
    }

    public func shutdown() async {
        await http.shutdown()
    }

    // MARK: - The calls

    /// `POST /v1/installation`: registers `key`'s public half; returns the installation token and bunq's server key.
    public func createInstallation(key: RSAPrivateKey) async throws -> InstallationResult {
        let endpoint = "POST installation"
        let reply = try await send("POST", "installation", body: ["client_public_key": .string(try key.publicKey.pem())])
        let token = try reply.require("Token", endpoint: endpoint)
        let serverKeyPEM = try reply.require("ServerPublicKey", endpoint: endpoint).string("server_public_key")
        guard (try? RSAPublicKey(pem: serverKeyPEM)) != nil else {
            throw BunqAPIError(.protocolError, endpoint: endpoint, status: 200, message: "the server public key is unusable",
                               responseId: reply.responseId)
        }
        return InstallationResult(id: try reply.require("Id", endpoint: endpoint).int("id"),
                                  token: try token.string("token"), serverPublicKeyPEM: serverKeyPEM)
    }

    /// `POST /v1/payment-service-provider-credential`: registers a PSD2 provider's certificate; returns the
    /// `token_value`, the provider's API key.
    public func registerPSD2Credential(_ installation: InstallationContext, certificate: Certificate,
                                       chain: [Certificate], certificateKey: RSAPrivateKey) async throws -> String {
        let signature = try PSD2RegistrationSignature.sign(clientPublicKey: installation.key.publicKey,
                                                           installationToken: installation.token,
                                                           certificateKey: certificateKey)
        let reply = try await send("POST", "payment-service-provider-credential", body: [
            "client_payment_service_provider_certificate": .string(certificate.pem),
            "client_payment_service_provider_certificate_chain": .string(chain.map(\.pem).joined()),
            "client_public_key_signature": .string(signature),
        ], token: installation.token, installation: installation)
        return try reply.require("CredentialPasswordIp", endpoint: "POST payment-service-provider-credential")
            .string("token_value")
    }

    /// `POST /v1/device-server`: binds `secret` to the installation and to `permittedIPs` (default: the
    /// client's). Once per installation.
    public func registerDevice(_ installation: InstallationContext, description: String, secret: String,
                               permittedIPs: [String]? = nil) async throws -> Int {
        let reply = try await send("POST", "device-server", body: [
            "description": .string(description), "secret": .string(secret),
            "permitted_ips": .array((permittedIPs ?? self.permittedIPs).map(JSONValue.string)),
        ], token: installation.token, installation: installation)
        return try reply.require("Id", endpoint: "POST device-server").int("id")
    }

    /// `POST /v1/session-server`: a new session for `secret`. Its expiry is anchored to *our* clock when the
    /// request was sent, plus the `session_timeout` that applies (or the one-hour first-session rule for a PSD2
    /// provider's first session): bunq created the session after we sent the request, so this is never later
    /// than bunq's own expiry, whatever the two clocks say. bunq's `Token.created` is kept as `serverCreated`,
    /// for a cross-check.
    public func createSession(_ installation: InstallationContext, secret: String,
                              isFirstPSD2Session: Bool = false) async throws -> BunqSession {
        let endpoint = "POST session-server"
        var sentAt = wallClock()
        let reply = try await send("POST", "session-server", body: ["secret": .string(secret)],
                                   token: installation.token, installation: installation, sentAt: &sentAt)
        let token = try reply.require("Token", endpoint: endpoint)
        guard let userItem = reply.items.first(where: { SessionUser.Kind(rawValue: $0.type) != nil }) else {
            throw BunqAPIError(.protocolError, endpoint: endpoint, status: 200, message: "the reply names no user",
                               responseId: reply.responseId)
        }
        let user = try SessionUser.parse(type: userItem.type, userItem.object)
        let serverCreated = try token.timestamp("created")
        var lifetime = user.sessionTimeout
        if isFirstPSD2Session, user.kind == .serviceProvider { lifetime = min(lifetime, psd2FirstSessionTimeout) }
        return BunqSession(id: try reply.require("Id", endpoint: endpoint).int("id"), token: try token.string("token"),
                           created: sentAt, expiresAt: sentAt.addingTimeInterval(TimeInterval(lifetime)),
                           serverCreated: serverCreated, user: user)
    }

    /// `DELETE /v1/session/0`: ends the session the token names.
    public func deleteSession(_ installation: InstallationContext, sessionToken: String) async throws {
        _ = try await send("DELETE", "session/0", token: sessionToken, installation: installation)
    }

    /// `GET /v1/user`: the session's user; proves a session token works.
    public func currentUser(_ installation: InstallationContext, sessionToken: String) async throws -> SessionUser {
        let reply = try await send("GET", "user", token: sessionToken, installation: installation)
        guard let item = reply.items.first else {
            throw BunqAPIError(.protocolError, endpoint: "GET user", status: 200, message: "no user listed",
                               responseId: reply.responseId)
        }
        return try SessionUser.parse(type: item.type, item.object)
    }

    // MARK: - OAuth client of the provider

    public func listOAuthClients(_ installation: InstallationContext, sessionToken: String,
                                 userId: Int) async throws -> [OAuthClientInfo] {
        let reply = try await send("GET", "user/\(userId)/oauth-client", token: sessionToken, installation: installation)
        return try reply.items.filter { $0.type == "OauthClient" }.map { try Self.oauthClient($0.object) }
    }

    public func createOAuthClient(_ installation: InstallationContext, sessionToken: String, userId: Int) async throws -> Int {
        let reply = try await send("POST", "user/\(userId)/oauth-client", body: ["status": "ACTIVE"],
                                   token: sessionToken, installation: installation)
        return try reply.require("Id", endpoint: "POST user/{id}/oauth-client").int("id")
    }

    public func oauthClient(_ installation: InstallationContext, sessionToken: String, userId: Int,
                            clientId: Int) async throws -> OAuthClientInfo {
        let reply = try await send("GET", "user/\(userId)/oauth-client/\(clientId)", token: sessionToken,
                                   installation: installation)
        return try Self.oauthClient(reply.require("OauthClient", endpoint: "GET user/{id}/oauth-client/{id}"))
    }

    public func addCallbackURL(_ installation: InstallationContext, sessionToken: String, userId: Int, clientId: Int,
                               url: String) async throws {
        _ = try await send("POST", "user/\(userId)/oauth-client/\(clientId)/callback-url", body: ["url": .string(url)],
                           token: sessionToken, installation: installation)
    }

    static func oauthClient(_ object: JSONObject) throws(BunqAPIError) -> OAuthClientInfo {
        OAuthClientInfo(id: try object.int("id"), status: try object.string("status"),
                        clientId: try object.string("client_id"), secret: try object.string("secret"),
                        callbackURLs: try object.objects("callback_url").map { object throws(BunqAPIError) in
                            try object.string("url")
                        })
    }

    // MARK: - OAuth authorization code flow

    /// The authorize URL to send a user to, with a fresh unguessable `state`.
    public func authorizeURL(clientId: String, redirectURI: String) throws -> (url: String, state: String) {
        let state = try SecureRandom.hexToken(byteCount: 16)
        var components = URLComponents(string: endpoints.oauthAuthorizeURL) ?? URLComponents()
        components.queryItems = (components.queryItems ?? []) + [
            URLQueryItem(name: "response_type", value: "code"), URLQueryItem(name: "client_id", value: clientId),
            URLQueryItem(name: "redirect_uri", value: redirectURI), URLQueryItem(name: "state", value: state),
        ]
        return (components.string ?? endpoints.oauthAuthorizeURL, state)
    }

    /// Exchanges an authorization code for an access token: query parameters, no body, no bunq headers.
    public func exchangeCode(_ code: String, redirectURI: String, client: OAuthClientInfo) async throws -> String {
        let endpoint = "POST token"
        var components = URLComponents(string: endpoints.oauthTokenURL) ?? URLComponents()
        components.queryItems = [
            URLQueryItem(name: "grant_type", value: "authorization_code"), URLQueryItem(name: "code", value: code),
            URLQueryItem(name: "redirect_uri", value: redirectURI), URLQueryItem(name: "client_id", value: client.clientId),
            URLQueryItem(name: "client_secret", value: client.secret),
        ]
        // URLQueryItem leaves '+' unencoded, which a form decoder reads as a space.
        components.percentEncodedQuery = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
        let slot = try await rateLimiter.acquire(method: "POST", endpoint: "token")
        let response: HTTPResponse
        do {
            response = try await http.execute(HTTPRequest(method: "POST", url: components.string ?? "",
                                                          headers: ["User-Agent": BunqSessiondVersion.userAgent]))
        } catch let error as HTTPClientError {
            await rateLimiter.settle(slot)
            throw BunqAPIError.transport(error, endpoint: endpoint)
        }
        await rateLimiter.settle(slot)
        if response.status == 429 { await rateLimiter.rateLimited(method: "POST", endpoint: "token") }
        let reply = OAuthTokenReply.decode(response.body)
        if response.status == 200, let token = reply?.accessToken, !token.isEmpty {
            return token
        }
        let error = reply?.error
        let description = reply?.errorDescription ?? error ?? "no access token in the reply"
        let kind: BunqAPIError.Kind = switch (response.status, error) {
        case (_, "invalid_client"): .credentialsRejected
        case (429, _): .rateLimited
        case (491, _), (500..., _): .transient
        case (200, _): .protocolError
        default: .badRequest
        }
        throw BunqAPIError(kind, endpoint: endpoint, status: response.status, message: description)
    }

    // MARK: - Transport

    /// Sends one call: serialized once, signed over exactly those bytes, within our rate limits; the reply's
    /// signature is verified over its raw body before it is parsed.
    func send(_ method: String, _ path: String, body: [String: JSONValue]? = nil, token: String? = nil,
              installation: InstallationContext? = nil) async throws -> BunqReply {
        var sentAt = wallClock()
        return try await send(method, path, body: body, token: token, installation: installation, sentAt: &sentAt)
    }

    /// `send`, reporting in `sentAt` our clock the moment the request went out (after any rate-limit wait). A
    /// 429 pushes that endpoint's window back in the limiter.
    func send(_ method: String, _ path: String, body: [String: JSONValue]?, token: String?,
              installation: InstallationContext?, sentAt: inout Date) async throws -> BunqReply {
        let endpointKey = BunqRateLimiter.endpointKey(path)
        let endpoint = "\(method) \(endpointKey)"
        let bytes = try body.map { try Self.bodyEncoder.encode(JSONValue.object($0)) } ?? Data()
        var headers: HTTPHeaders = [
            "User-Agent": BunqSessiondVersion.userAgent,
            "Cache-Control": "no-cache",
            "X-Bunq-Client-Request-Id": UUID().uuidString.lowercased(),
            "X-Bunq-Geolocation": "0 0 0 0 NL",
            "X-Bunq-Language": "en_US",
            "X-Bunq-Region": "nl_NL",
        ]
        if body != nil { headers.add("Content-Type", "application/json") }
        if let token { headers.add("X-Bunq-Client-Authentication", token) }
        if let installation { headers.add("X-Bunq-Client-Signature", try installation.key.base64Signature(for: bytes)) }

        let slot = try await rateLimiter.acquire(method: method, endpoint: endpointKey)
        sentAt = wallClock()
        let clock = rateLimiter.clock
        let started = clock.now
        let response: HTTPResponse
        do {
            response = try await http.execute(HTTPRequest(method: method, url: endpoints.apiBaseURL + path,
                                                          headers: headers, body: bytes))
        } catch let error as HTTPClientError {
            await rateLimiter.settle(slot)
            BunqMetrics.request(endpoint: endpointKey, method: method, code: "error", duration: clock.now - started)
            throw BunqAPIError.transport(error, endpoint: endpoint)
        }
        await rateLimiter.settle(slot)
        BunqMetrics.request(endpoint: endpointKey, method: method, code: "\(response.status)",
                            duration: clock.now - started)
        if response.status == 429 {
            BunqMetrics.rateLimited(endpoint: endpointKey)
            await rateLimiter.rateLimited(method: method, endpoint: endpointKey)
        }
        return try Self.decode(response, endpoint: endpoint, serverKey: installation?.serverKey)
    }

    /// A request body's bytes: compact, keys sorted (signed exactly as sent).
    private static var bodyEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }

    static func decode(_ response: HTTPResponse, endpoint: String, serverKey: RSAPublicKey?) throws(BunqAPIError) -> BunqReply {
        let responseId = response.headers["X-Bunq-Client-Response-Id"]
        let success = (200..<300).contains(response.status)
        if let serverKey {
            // A success must be signed; an error is checked when signed (a load balancer's reply is not).
            if let signature = response.headers["X-Bunq-Server-Signature"] {
                do {
                    try serverKey.verify(base64Signature: signature, for: response.body)
                } catch {
                    throw BunqAPIError(.responseNotAuthentic, endpoint: endpoint, status: response.status,
                                       message: "the server signature does not verify (\((error as? CryptoError)?.code.rawValue ?? "\(error)"))",
                                       responseId: responseId)
                }
            } else if success {
                throw BunqAPIError(.responseNotAuthentic, endpoint: endpoint, status: response.status,
                                   message: "the reply carries no X-Bunq-Server-Signature", responseId: responseId)
            }
        }
        guard success else {
            let message = BunqErrorBody.description(in: response.body) ?? "HTTP \(response.status) without a bunq error body"
            throw BunqAPIError.classify(status: response.status, message: message, endpoint: endpoint,
                                        responseId: responseId)
        }
        // bunq's success envelope, `{"Response": [{"Type": {…}}, …]}`, is read dynamically (`JSONObject`): every
        // endpoint puts other types in it, and a missing field must be named in the error, not lost in a
        // DecodingError.
        guard let items = JSONValue(parsing: response.body)?["Response"]?.array else {
            throw BunqAPIError(.protocolError, endpoint: endpoint, status: response.status,
                               message: "the reply is not a bunq Response envelope", responseId: responseId)
        }
        return BunqReply(items: items.compactMap { item in
            guard let members = item.object, members.count == 1, let (type, value) = members.first,
                  let object = value.object else { return nil }
            return (type, JSONObject(object, context: type))
        }, responseId: responseId)
    }
}
