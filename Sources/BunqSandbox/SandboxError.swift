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
    /// 403 with the *authentication* wording: a dead session, as bunq also answers it.
    static let insufficientAuthentication403 = SandboxError(403, "Insufficient authentication.")
    static let insufficientAuthorisation = SandboxError(403, "Insufficient authorisation.")
    /// A live session asking for another user's objects: a permissions error, not a dead session. The wording is
    /// bunq's description of 403 in DESCRIPTION.md ("You're not allowed to make this call").
    static let notAllowed = SandboxError(403, "You're not allowed to make this call.")
    /// A reused `X-Bunq-Client-Request-Id` (DESCRIPTION.md: "the server will respond with an error when the same
    /// ID is used again"); the wording is ours.
    static let requestIdReused = SandboxError(400, "The X-Bunq-Client-Request-Id has already been used for this device.")

    static func missingHeader(_ name: String) -> SandboxError {
        SandboxError(400, "The header \(name) is required.")
    }

    static func badRequest(_ description: String) -> SandboxError { SandboxError(400, description) }
    static func notFound(_ what: String) -> SandboxError { SandboxError(404, "\(what) not found.") }
}
