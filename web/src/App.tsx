// The shell: who is signed in decides the screens. Admins get the CMS, customers their page.
import { useEffect, useState, type MouseEvent, type ReactNode } from "react";
import { useQueryClient } from "@tanstack/react-query";
import { navigate, usePath } from "./router.js";
import { session, type Session } from "./session.js";
import { LoginPage, RegisterPage } from "./pages/Login.js";
import { Dashboard } from "./pages/Dashboard.js";
import { Campaigns } from "./pages/Campaigns.js";
import { Books } from "./pages/Books.js";
import { Redemptions } from "./pages/Redemptions.js";
import { ProviderRequests } from "./pages/ProviderRequests.js";
import { Users } from "./pages/Users.js";
import { CustomerHome } from "./pages/Customer.js";

function useSession(): Session | undefined {
  const [s, setS] = useState(session.get());
  useEffect(() => session.subscribe(setS), []);
  return s;
}

export function Link({ to, children }: { to: string; children: ReactNode }) {
  const path = usePath();
  const active = path === to || (to !== "/" && path.startsWith(to + "/"));
  const onClick = (e: MouseEvent) => {
    if (e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    navigate(to);
  };
  return (
    <a href={to} onClick={onClick} aria-current={active ? "page" : undefined}>
      {children}
    </a>
  );
}

const ADMIN_PAGES: [string, string, () => ReactNode][] = [
  ["/dashboard", "Dashboard", () => <Dashboard />],
  ["/campaigns", "Campaigns", () => <Campaigns />],
  ["/books", "Books", () => <Books />],
  ["/redemptions", "Redemptions", () => <Redemptions />],
  ["/provider", "Provider requests", () => <ProviderRequests />],
  ["/users", "Users", () => <Users />],
];

export function App() {
  const s = useSession();
  const path = usePath();
  const queryClient = useQueryClient();
  const admin = session.isAdmin(s);

  useEffect(() => {
    if (!s && path !== "/login" && path !== "/register") navigate("/login");
    if (s && (path === "/" || path === "/login" || path === "/register")) navigate(admin ? "/dashboard" : "/me");
  }, [s, path, admin]);

  if (!s) {
    return <main className="narrow">{path === "/register" ? <RegisterPage /> : <LoginPage />}</main>;
  }
  const logout = async () => {
    await session.logout();
    queryClient.clear();
    navigate("/login");
  };
  const page = admin ? ADMIN_PAGES.find(([p]) => path === p || path.startsWith(p + "/")) : undefined;
  return (
    <>
      <header className="top">
        <strong>Vouch</strong>
        <nav aria-label="Main">
          {admin && ADMIN_PAGES.map(([to, label]) => <Link key={to} to={to}>{label}</Link>)}
          <Link to="/me">My vouchers</Link>
        </nav>
        <span className="who">
          {s.user.fullName || s.user.username}
          <button type="button" onClick={logout}>Log out</button>
        </span>
      </header>
      <main>{page ? page[2]() : <CustomerHome />}</main>
    </>
  );
}
