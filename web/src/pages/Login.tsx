// Signing in (username, email or phone number) and registering.
import { useState, type FormEvent } from "react";
import { useMutation } from "@connectrpc/connect-query";
import { AuthService } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { Link } from "../App.js";
import { navigate } from "../router.js";
import { session } from "../session.js";
import { ErrorNote, Field, newRequestId } from "../ui.js";

export function LoginPage() {
  const [identifier, setIdentifier] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const s = await session.login(identifier.trim(), password);
      navigate(session.isAdmin(s) ? "/dashboard" : "/me");
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section>
      <h1>Sign in to Vouch</h1>
      <form onSubmit={submit} aria-label="Sign in">
        <Field label="Username, email or phone number" name="identifier" autoComplete="username" required value={identifier} onChange={(e) => setIdentifier(e.target.value)} />
        <Field label="Password" name="password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
        <ErrorNote error={error} />
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
      <p>
        New here? <Link to="/register">Create an account</Link>
      </p>
    </section>
  );
}

export function RegisterPage() {
  const [form, setForm] = useState({ fullName: "", username: "", email: "", phoneNumber: "", password: "" });
  const [requestId] = useState(newRequestId);
  const register = useMutation(AuthService.method.register);
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    register.mutate({ ...form, requestId });
  };
  if (register.isSuccess) {
    return (
      <section>
        <h1>Welcome, {register.data.user?.fullName}</h1>
        <p role="status">Your account is ready. Sign in to see your vouchers.</p>
        <button type="button" onClick={() => navigate("/login")}>Go to sign in</button>
      </section>
    );
  }
  return (
    <section>
      <h1>Create an account</h1>
      <form onSubmit={submit} aria-label="Register">
        <Field label="Full name" name="fullName" autoComplete="name" required value={form.fullName} onChange={set("fullName")} />
        <Field label="Username" name="username" autoComplete="username" required value={form.username} onChange={set("username")} hint="Starts with a letter; no @." />
        <Field label="Email" name="email" type="email" autoComplete="email" required value={form.email} onChange={set("email")} />
        <Field label="Phone number" name="phoneNumber" type="tel" autoComplete="tel" required value={form.phoneNumber} onChange={set("phoneNumber")} hint="With country code, e.g. +84 90 912 3456." />
        <Field label="Password" name="password" type="password" autoComplete="new-password" required minLength={8} value={form.password} onChange={set("password")} hint="At least 8 characters; not a common password." />
        <ErrorNote error={register.error} />
        <button type="submit" disabled={register.isPending}>{register.isPending ? "Creating…" : "Create account"}</button>
      </form>
      <p>
        Already registered? <Link to="/login">Sign in</Link>
      </p>
    </section>
  );
}
