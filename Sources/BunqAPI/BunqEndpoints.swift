import Foundation

/// The product's version, sent in `User-Agent` so bunq can tell our traffic apart.
public enum BunqSessiondVersion {
    public static let current = "0.1.0"
    public static var userAgent: String { "bunq-sessiond/\(current)" }
}

/// Where bunq is: the REST API base, the OAuth authorize page and the token exchange, plus an optional CA file.
public struct BunqEndpoints: Sendable, Equatable {
    public enum Environment: String, Sendable, CaseIterable {
        case sandbox
        case production
    }

    /// Ends with `/v1/`.
    public let apiBaseURL: String
    public let oauthAuthorizeURL: String
    public let oauthTokenURL: String
    public let caFile: String?

    public static func preset(_ environment: Environment) -> BunqEndpoints {
        switch environment {
        case .production:
            BunqEndpoints(unchecked: "https://api.bunq.com/v1/", "https://oauth.bunq.com/auth",
                          "https://api.oauth.bunq.com/v1/token")
        case .sandbox:
            BunqEndpoints(unchecked: "https://public-api.sandbox.bunq.com/v1/", "https://oauth.sandbox.bunq.com/auth",
                          "https://api-oauth.sandbox.bunq.com/v1/token")
        }
    }

    /// The three URLs of a local emulator at `base` (e.g. `http://127.0.0.1:8089`).
    public static func emulator(_ base: String) throws(BunqEndpointError) -> BunqEndpoints {
        try BunqEndpoints(apiBaseURL: base + "/v1/", oauthAuthorizeURL: base + "/auth", oauthTokenURL: base + "/v1/token")
    }

    /// Validated endpoints: absolute URLs, `https://` unless the host is a loopback address (a local emulator).
    public init(apiBaseURL: String, oauthAuthorizeURL: String, oauthTokenURL: String,
                caFile: String? = nil) throws(BunqEndpointError) {
        for (key, url) in [("api_base_url", apiBaseURL), ("oauth_authorize_url", oauthAuthorizeURL),
                           ("oauth_token_url", oauthTokenURL)] {
            try Self.validate(key, url)
        }
        self.init(unchecked: apiBaseURL.hasSuffix("/") ? apiBaseURL : apiBaseURL + "/", oauthAuthorizeURL,
                  oauthTokenURL, caFile: caFile)
    }

    private init(unchecked apiBaseURL: String, _ authorize: String, _ token: String, caFile: String? = nil) {
        self.apiBaseURL = apiBaseURL
        self.oauthAuthorizeURL = authorize
        self.oauthTokenURL = token
        self.caFile = caFile
    }

    public func withCAFile(_ caFile: String?) -> BunqEndpoints {
        BunqEndpoints(unchecked: apiBaseURL, oauthAuthorizeURL, oauthTokenURL, caFile: caFile)
    }

    static func validate(_ key: String, _ url: String) throws(BunqEndpointError) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              let host = components.host, !host.isEmpty else {
            throw BunqEndpointError(key: key, url: url, reason: "is not an absolute URL")
        }
        switch scheme {
        case "https":
            return
        case "http":
            guard isLoopback(host) else {
                throw BunqEndpointError(key: key, url: url,
                                        reason: "uses plain http:// for a non-loopback host; use https://")
            }
        default:
            throw BunqEndpointError(key: key, url: url, reason: "must be http:// (loopback only) or https://")
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
        if bare == "localhost" || bare == "::1" { return true }
        let parts = bare.split(separator: ".")
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// A configured URL that cannot be used, naming its configuration key.
public struct BunqEndpointError: Error, Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let url: String
    public let reason: String
    public var description: String { "\(key): \(url) \(reason)" }
}
