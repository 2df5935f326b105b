/// A bunq error reply: the status and the `error_description` bunq would send.
struct SandboxError: Error, Sendable {
    let status: Int
    let description: String

    init(_ status: Int, _ description: String) {
        self.status = status
        self.description = description
    }

    static let credentialsIncorrect = SandboxError(400, "User credentials are incorrect. Incorrect API key or IP address.")
    static let signatureRequired = SandboxError(466, "For this operation a request signature is required.")
    static let signatureInvalid = SandboxError(400, "The request signature is invalid.")
    static let insufficientAuthentication = SandboxError(401, "Insufficient authentication.")
    static let insufficientAuthorisation = SandboxError(403, "Insufficient authorisation.")

    static func badRequest(_ description: String) -> SandboxError { SandboxError(400, description) }
    static func notFound(_ what: String) -> SandboxError { SandboxError(404, "\(what) not found.") }
}
