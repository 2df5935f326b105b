import CCurl
import Foundation
import Synchronization

/// One request's libcurl easy handle, its buffers and the continuation awaiting it.
///
/// `@unchecked Sendable`: the task calling `HTTPClient.execute` configures the transfer and then hands it to the
/// loop thread through the loop's mutex-guarded inbox; from then on only the loop thread touches it, except
/// `cancelRequested`, which is atomic.
final class CurlTransfer: @unchecked Sendable {
    let request: HTTPRequest
    let endpoint: String
    private(set) var easy: UnsafeMutableRawPointer?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let maxResponseBytes: Int

    private var continuation: CheckedContinuation<HTTPResponse, any Error>?
    let cancelRequested = Atomic<Bool>(false)

    // Filled by libcurl's callbacks on the loop thread.
    private var responseHeaders = HTTPHeaders()
    private var responseBody = Data()
    private var bodyTooLarge = false

    init(request: HTTPRequest, configuration: HTTPClient.Configuration) throws {
        self.request = request
        self.endpoint = request.endpoint
        self.maxResponseBytes = configuration.maxResponseBytes
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        try Self.validate(request, endpoint: endpoint)
        guard let easy = curl_easy_init() else {
            throw HTTPClientError(.internalError, "libcurl could not create a transfer", endpoint: endpoint)
        }
        self.easy = easy
        try configure(easy, configuration)
    }

    deinit {
        release()
        errorBuffer.deallocate()
    }

    /// Frees the easy handle and header list; the handle must no longer be in a multi handle.
    func release() {
        if let easy { curl_easy_cleanup(easy) }
        easy = nil
        if let headerList { curl_slist_free_all(headerList) }
        headerList = nil
    }

    func attach(_ continuation: CheckedContinuation<HTTPResponse, any Error>) {
        self.continuation = continuation
    }

    /// Resumes the awaiting task exactly once and frees the handle.
    func finish(_ result: Result<HTTPResponse, any Error>) {
        release()
        continuation?.resume(with: result)
        continuation = nil
    }

    /// The outcome once libcurl reports the transfer done with `code`.
    func outcome(_ code: CURLcode) -> Result<HTTPResponse, any Error> {
        guard let easy else {
            return .failure(HTTPClientError(.internalError, "transfer finished without a handle", endpoint: endpoint))
        }
        guard code == CURLE_OK else { return .failure(classify(code, easy)) }
        var status = 0, connects = 0, version = 0
        _ = bsc_curl_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
        _ = bsc_curl_easy_getinfo_long(easy, CURLINFO_NUM_CONNECTS, &connects)
        _ = bsc_curl_easy_getinfo_long(easy, CURLINFO_HTTP_VERSION, &version)
        let versionText = switch version {
        case CURL_HTTP_VERSION_1_0: "1.0"
        case CURL_HTTP_VERSION_2_0: "2"
        case CURL_HTTP_VERSION_3: "3"
        default: "1.1"
        }
        return .success(HTTPResponse(status: status, headers: responseHeaders, body: responseBody,
                                     httpVersion: versionText, newConnections: connects))
    }

    // MARK: - Set-up

    private static func validate(_ request: HTTPRequest, endpoint: String) throws {
        guard Self.hasHTTPSchemeAndHost(request.url) else {
            throw HTTPClientError(.invalidRequest, "the URL must be an absolute http:// or https:// URL",
                                  endpoint: endpoint)
        }
        guard !request.method.isEmpty, request.method.utf8.allSatisfy({ (0x41...0x5A).contains($0) }) else {
            throw HTTPClientError(.invalidRequest, "the method must be an uppercase token", endpoint: endpoint)
        }
        for field in request.headers {
            let nameIsToken = !field.name.isEmpty && field.name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }
            let valueIsClean = !field.value.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
            guard nameIsToken, valueIsClean else {
                throw HTTPClientError(.invalidRequest, "header '\(field.name)' has a malformed name or value",
                                      endpoint: endpoint)
            }
        }
    }

    /// Whether `url` is `http://` or `https://` (any case) with a non-empty host: what must hold before libcurl
    /// sees it (libcurl checks the rest). Bytes only, no URL parser: this runs on every request, and Foundation's
    /// parser (IDNA through ICU) cost more than the rest of the request path around it.
    static func hasHTTPSchemeAndHost(_ url: String) -> Bool {
        let bytes = Array(url.utf8)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")), bytes.count > colon + 2,
              bytes[colon + 1] == UInt8(ascii: "/"), bytes[colon + 2] == UInt8(ascii: "/") else { return false }
        let scheme = String(decoding: bytes[..<colon], as: UTF8.self).lowercased()
        guard scheme == "http" || scheme == "https" else { return false }
        let authority = bytes[(colon + 3)...].prefix { $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "?") && $0 != UInt8(ascii: "#") }
        // The host is what follows any userinfo and precedes any port (an IPv6 literal keeps its brackets).
        var host = authority.split(separator: UInt8(ascii: "@"), omittingEmptySubsequences: false).last ?? []
        if host.first == UInt8(ascii: "[") {
            return host.contains(UInt8(ascii: "]")) && host.count > 2
        }
        if let portColon = host.firstIndex(of: UInt8(ascii: ":")) { host = host[..<portColon] }
        return !host.isEmpty
    }

    private func configure(_ easy: UnsafeMutableRawPointer, _ configuration: HTTPClient.Configuration) throws {
        var failed: CURLoption?
        func set(_ option: CURLoption, _ value: Int) {
            if bsc_curl_easy_setopt_long(easy, option, value) != CURLE_OK { failed = failed ?? option }
        }
        func set(_ option: CURLoption, _ value: String) {
            if bsc_curl_easy_setopt_string(easy, option, value) != CURLE_OK { failed = failed ?? option }
        }
        let me = Unmanaged.passUnretained(self).toOpaque()

        set(CURLOPT_URL, request.url)
        set(CURLOPT_PROTOCOLS_STR, "http,https")
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_TCP_KEEPALIVE, 1)
        set(CURLOPT_CONNECTTIMEOUT_MS, (request.connectTimeout ?? configuration.connectTimeout).milliseconds)
        set(CURLOPT_TIMEOUT_MS, (request.timeout ?? configuration.timeout).milliseconds)
        set(CURLOPT_SSL_VERIFYPEER, 1)
        set(CURLOPT_SSL_VERIFYHOST, 2)
        if let caFile = configuration.caFile { set(CURLOPT_CAINFO, caFile) }
        // "host!" makes curl take the text as an address, never as an interface name.
        if let localAddress = configuration.localAddress { set(CURLOPT_INTERFACE, "host!" + localAddress) }
        if bsc_curl_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, errorBuffer) != CURLE_OK { failed = CURLOPT_ERRORBUFFER }

        switch (request.method, request.body.isEmpty) {
        case ("GET", true):
            set(CURLOPT_HTTPGET, 1)
        case ("HEAD", true):
            set(CURLOPT_NOBODY, 1)
        case (_, false), ("POST", true), ("PUT", true), ("PATCH", true):
            // POSTFIELDSIZE first: COPYPOSTFIELDS copies that many bytes, so bodies may contain NUL.
            set(CURLOPT_POST, 1)
            if bsc_curl_easy_setopt_off_t(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count)) != CURLE_OK {
                failed = CURLOPT_POSTFIELDSIZE_LARGE
            }
            let copied = request.body.isEmpty
                ? bsc_curl_easy_setopt_string(easy, CURLOPT_COPYPOSTFIELDS, "")
                : request.body.withUnsafeBytes { bytes in
                    bsc_curl_easy_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress))
                }
            if copied != CURLE_OK { failed = CURLOPT_COPYPOSTFIELDS }
            if request.method != "POST" { set(CURLOPT_CUSTOMREQUEST, request.method) }
        default:
            set(CURLOPT_CUSTOMREQUEST, request.method)
        }

        var lines = request.headers.map { $0.value.isEmpty ? "\($0.name);" : "\($0.name): \($0.value)" }
        // No `Expect: 100-continue` round trip, and no form content type the caller did not ask for.
        lines.append("Expect:")
        if !request.headers.contains("Content-Type") { lines.append("Content-Type:") }
        for line in lines {
            guard let list = curl_slist_append(headerList, line) else {
                throw HTTPClientError(.internalError, "libcurl could not store a header", endpoint: endpoint)
            }
            headerList = list
        }
        if bsc_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList) != CURLE_OK { failed = CURLOPT_HTTPHEADER }

        if bsc_curl_easy_setopt_data_callback(easy, CURLOPT_WRITEFUNCTION, { buffer, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.receiveBody(UnsafeRawBufferPointer(start: buffer, count: size * count))
        }) != CURLE_OK { failed = CURLOPT_WRITEFUNCTION }
        if bsc_curl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, me) != CURLE_OK { failed = CURLOPT_WRITEDATA }
        if bsc_curl_easy_setopt_data_callback(easy, CURLOPT_HEADERFUNCTION, { buffer, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.receiveHeaderLine(UnsafeRawBufferPointer(start: buffer, count: size * count))
        }) != CURLE_OK { failed = CURLOPT_HEADERFUNCTION }
        if bsc_curl_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, me) != CURLE_OK { failed = CURLOPT_HEADERDATA }

        if let failed {
            throw HTTPClientError(.invalidRequest, "libcurl rejected option \(failed.rawValue)", endpoint: endpoint)
        }
    }

    // MARK: - libcurl callbacks (loop thread)

    private func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard responseBody.count + bytes.count <= maxResponseBytes else {
            bodyTooLarge = true
            return 0 // makes libcurl abort with CURLE_WRITE_ERROR
        }
        responseBody.append(contentsOf: bytes)
        return bytes.count
    }

    /// One header line as libcurl hands it over (with its CRLF), split and trimmed on bytes: this runs for every
    /// header of every response.
    private func receiveHeaderLine(_ bytes: UnsafeRawBufferPointer) -> Int {
        let line = Self.trimmed(bytes[...])
        if line.starts(with: "HTTP/".utf8) {
            // A new status line: a redirect or interim 1xx response came before; keep only the final headers.
            responseHeaders = HTTPHeaders()
        } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            responseHeaders.add(String(decoding: Self.trimmed(line[..<colon]), as: UTF8.self),
                                String(decoding: Self.trimmed(line[(colon + 1)...]), as: UTF8.self))
        }
        return bytes.count
    }

    /// `bytes` without leading and trailing spaces, tabs, CRs and LFs.
    static func trimmed(_ bytes: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0A }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) })
        else { return bytes[bytes.startIndex..<bytes.startIndex] }
        return bytes[first...last]
    }

    // MARK: - Classification

    private func classify(_ code: CURLcode, _ easy: UnsafeMutableRawPointer) -> HTTPClientError {
        let curlText = String(cString: errorBuffer).isEmpty ? String(cString: curl_easy_strerror(code))
                                                             : String(cString: errorBuffer)
        var osErrno = 0
        _ = bsc_curl_easy_getinfo_long(easy, CURLINFO_OS_ERRNO, &osErrno)
        var connectMicros: curl_off_t = 0
        _ = bsc_curl_easy_getinfo_off_t(easy, CURLINFO_CONNECT_TIME_T, &connectMicros)

        let (kind, message): (HTTPClientError.Kind, String) = switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            (.dns, "the host name could not be resolved")
        case CURLE_COULDNT_CONNECT where osErrno == Int(ECONNREFUSED):
            (.connectionRefused, "the connection was refused (nothing listening?)")
        case CURLE_COULDNT_CONNECT:
            (.connectFailed, "could not connect")
        case CURLE_OPERATION_TIMEDOUT where connectMicros == 0:
            (.connectTimeout, "no connection within the connect timeout")
        case CURLE_OPERATION_TIMEDOUT:
            (.timeout, "no complete response within the timeout")
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
             CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH,
             CURLE_SSL_INVALIDCERTSTATUS, CURLE_SSL_ENGINE_NOTFOUND, CURLE_SSL_ENGINE_SETFAILED,
             CURLE_SSL_ENGINE_INITFAILED, CURLE_SSL_SHUTDOWN_FAILED, CURLE_SSL_CRL_BADFILE, CURLE_SSL_CLIENTCERT,
             CURLE_USE_SSL_FAILED:
            (.tls, "TLS failed")
        case CURLE_WRITE_ERROR where bodyTooLarge:
            (.responseTooLarge, "the response body exceeds \(maxResponseBytes) bytes")
        case CURLE_GOT_NOTHING, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE:
            (.connectionLost, "the connection closed before a complete response arrived")
        case CURLE_WEIRD_SERVER_REPLY, CURLE_HTTP2, CURLE_HTTP2_STREAM, CURLE_BAD_CONTENT_ENCODING,
             CURLE_HTTP3, CURLE_RANGE_ERROR, CURLE_TOO_MANY_REDIRECTS:
            (.protocolError, "the server's reply is not valid HTTP")
        case CURLE_UNSUPPORTED_PROTOCOL, CURLE_URL_MALFORMAT, CURLE_BAD_FUNCTION_ARGUMENT:
            (.invalidRequest, "libcurl refused the request")
        default:
            (.internalError, "libcurl failed")
        }
        return HTTPClientError(kind, message, endpoint: endpoint, curlCode: Int32(code.rawValue), curlMessage: curlText)
    }
}

extension Duration {
    /// Whole milliseconds, at least 1 so a tiny positive timeout never becomes libcurl's "no timeout" (0).
    var milliseconds: Int {
        let (seconds, attoseconds) = components
        return max(1, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }
}
