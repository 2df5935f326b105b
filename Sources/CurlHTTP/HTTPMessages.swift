import Foundation

/// One HTTP request: exactly these bytes are sent as the body, so a signature computed over `body` matches what
/// the server receives.
public struct HTTPRequest: Sendable {
    /// An uppercase method token: GET, POST, PUT, DELETE, ...
    public var method: String
    /// An absolute `http://` or `https://` URL.
    public var url: String
    public var headers: HTTPHeaders
    public var body: Data
    /// Overrides the client's connect timeout for this request.
    public var connectTimeout: Duration?
    /// Overrides the client's total timeout (connect, send, wait, receive) for this request.
    public var timeout: Duration?

    public init(method: String = "GET", url: String, headers: HTTPHeaders = HTTPHeaders(), body: Data = Data(),
                connectTimeout: Duration? = nil, timeout: Duration? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.connectTimeout = connectTimeout
        self.timeout = timeout
    }

    /// `METHOD scheme://host:port/path`: the request's endpoint without its query string, which can carry
    /// secrets (the OAuth token exchange sends `client_secret` there). Safe for logs and error messages.
    public var endpoint: String {
        "\(method) \(Self.redactedURL(url))"
    }

    static func redactedURL(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.host != nil else {
            return String(url.prefix { $0 != "?" && $0 != "#" })
        }
        components.user = nil
        components.password = nil
        components.query = nil
        components.fragment = nil
        return components.string ?? String(url.prefix { $0 != "?" })
    }
}

/// A complete HTTP response with its body exactly as received (never re-encoded), so response signatures can be
/// verified over the raw bytes.
public struct HTTPResponse: Sendable {
    public let status: Int
    /// The headers of the final response (those of interim 1xx responses are dropped).
    public let headers: HTTPHeaders
    public let body: Data
    /// "1.1" or "2".
    public let httpVersion: String
    /// New connections this request opened: 0 when it reused a pooled connection.
    public let newConnections: Int
}
