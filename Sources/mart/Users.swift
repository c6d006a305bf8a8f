import ArgumentParser
import Foundation
import Logging
import MartRuntime
import UserService

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

struct Users: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Manage user accounts directly in the user database.", subcommands: [CreateAdmin.self])

  struct CreateAdmin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "create-admin",
      abstract: "Create an admin account (or, when asked, make an existing account one).",
      discussion: """
        Connects to the user database (MART_USER_DATABASE_URL) and applies pending migrations first. \
        A new account gets roles CUSTOMER and ADMIN and the password asked for (without echo), under \
        the same password policy as registration. An account that already has the email is refused: \
        anyone could have registered it first. With --promote-existing it gains ADMIN, its password \
        is reset to the one asked for, and all its sessions are signed out.

        With --password-stdin, or when standard input is not a terminal, the password is the first \
        line of standard input. There is no default account and no default password.

        Exit status: 0 done, 1 failed (e.g. database unreachable), 2 bad arguments or password.
        """)

    @Option(help: "The admin's login email.")
    var email: String?

    @Option(help: "Full name of a new account.")
    var fullName: String = "Administrator"

    @Flag(help: "Read the password from the first line of standard input instead of prompting.")
    var passwordStdin = false

    @Flag(
      help: "Make an existing account with this email an admin: its password is reset and its sessions revoked.")
    var promoteExisting = false

    func run() async throws {
      guard let rawEmail = email, !rawEmail.isEmpty else { fail(2, "--email is required") }
      let email: String
      do {
        email = try UserAdministration.normalizedEmail(rawEmail)
      } catch {
        fail(2, "--email: \(error)")
      }
      let environment = EnvironmentReader()
      let (_, logger) = try bootstrapProcess(name: "users", environment: environment)
      let configuration = try loadConfiguration { try ServiceConfiguration(.user, environment: environment) }
      let passwordStdin = self.passwordStdin
      let fullName = self.fullName

      let outcome: Result<UserAdministration.CreateAdminResult, any Error> = try await withMigratedDatabase(
        configuration, logger: logger
      ) { client in
        do {
          return .success(
            try await UserAdministration.createAdmin(
              database: client, email: email, fullName: fullName, promoteExisting: promoteExisting, logger: logger
            ) {
              try Self.readPassword(for: email, fromStandardInput: passwordStdin)
            })
        } catch {
          return .failure(error)
        }
      }

      switch outcome {
      case .success(.created(let id)):
        print("created admin account \(email) (id \(id.uuidString.lowercased())) with roles customer, admin")
      case .success(.promoted(let id)):
        print(
          "\(email) already had an account (id \(id.uuidString.lowercased())): added the admin role, reset its password and signed out its sessions"
        )
      case .success(.alreadyAdmin(let id)):
        print("\(email) (id \(id.uuidString.lowercased())) is already an admin: nothing changed")
      case .failure(let error as UserAdministration.InvalidInput):
        fail(2, error.description)
      case .failure(let error as PasswordInputError):
        fail(2, error.description)
      case .failure(let error):
        fail(1, "could not create the admin account: \(UserAdministration.describe(error))")
      }
    }

    /// The new account's password: a no-echo prompt, asked twice, on a terminal; else one line of
    /// standard input. Checked against the password policy before anything is stored.
    static func readPassword(for email: String, fromStandardInput: Bool) throws -> String {
      let password: String
      if fromStandardInput || isatty(STDIN_FILENO) == 0 {
        guard let line = readLine(strippingNewline: true), !line.isEmpty else {
          throw PasswordInputError(description: "no password on standard input (expected one line)")
        }
        password = line
      } else {
        guard let first = prompt("Password for the new admin \(email): "),
          let second = prompt("Repeat the password: ")
        else { throw PasswordInputError(description: "could not read the password from the terminal") }
        guard first == second else { throw PasswordInputError(description: "the passwords do not match") }
        password = first
      }
      let problems = UserAdministration.passwordProblems(password, email: email)
      guard problems.isEmpty else {
        throw PasswordInputError(description: problems.joined(separator: "; "))
      }
      return password
    }

    /// Reads a line from the terminal without echo.
    static func prompt(_ text: String) -> String? {
      guard let pointer = getpass(text) else { return nil }
      let value = String(cString: pointer)
      // getpass returns a static buffer: do not leave the password lying in it.
      memset(pointer, 0, strlen(pointer))
      return value
    }
  }
}

private struct PasswordInputError: Error, CustomStringConvertible {
  var description: String
}
