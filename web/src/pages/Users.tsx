// Users: search by name, username, email or phone; grant the ADMIN role.
import { useState } from "react";
import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import { AuthService, Role, type User } from "../../../gen/vouch/auth/v1/auth_pb.js";
import { Empty, ErrorNote, Field, Loading, when } from "../ui.js";

export function Users() {
  const [query, setQuery] = useState("");
  const [applied, setApplied] = useState("");
  const users = useQuery(AuthService.method.listUsers, { query: applied, pageSize: 50 });
  return (
    <section>
      <h1>Users</h1>
      <form className="card row" aria-label="Search users" onSubmit={(e) => (e.preventDefault(), setApplied(query.trim()))}>
        <Field label="Search (name, username, email or phone)" type="search" value={query} onChange={(e) => setQuery(e.target.value)} />
        <button type="submit">Search</button>
      </form>
      {users.isPending ? (
        <Loading what="Loading users" />
      ) : users.error ? (
        <ErrorNote error={users.error} />
      ) : users.data.users.length === 0 ? (
        <Empty>No users match.</Empty>
      ) : (
        <table>
          <thead><tr><th>Name</th><th>Username</th><th>Email</th><th>Phone</th><th>Roles</th><th>Last login</th><th /></tr></thead>
          <tbody>{users.data.users.map((u) => <UserRow key={u.id} user={u} />)}</tbody>
        </table>
      )}
    </section>
  );
}

function UserRow({ user: u }: { user: User }) {
  const queryClient = useQueryClient();
  const grant = useMutation(AuthService.method.grantRole, { onSuccess: () => queryClient.invalidateQueries() });
  const admin = u.roles.includes(Role.ADMIN);
  return (
    <tr>
      <td>{u.fullName}</td>
      <td>{u.username}</td>
      <td>{u.email}</td>
      <td>{u.phoneNumber}</td>
      <td>{u.roles.map((r) => Role[r]).join(", ")}</td>
      <td>{when(u.lastLoginTime)}</td>
      <td>
        {!admin && (
          <button type="button" onClick={() => confirm(`Make ${u.username} an administrator?`) && grant.mutate({ userId: u.id, role: Role.ADMIN })}>Grant admin</button>
        )}
        <ErrorNote error={grant.error} />
      </td>
    </tr>
  );
}
