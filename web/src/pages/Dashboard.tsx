// Analytics at a glance: codes per book, grants per campaign, redemptions over the last day.
import { useState } from "react";
import { useQueries } from "@tanstack/react-query";
import { createQueryOptions, useQuery, useTransport } from "@connectrpc/connect-query";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { PromotionService } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { VoucherService } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { Bars, Empty, ErrorNote, Loading } from "../ui.js";

export function Dashboard() {
  return (
    <section>
      <h1>Dashboard</h1>
      <div className="charts">
        <CodesPerBook />
        <GrantsPerCampaign />
        <RedemptionsOverTime />
      </div>
    </section>
  );
}

function CodesPerBook() {
  const transport = useTransport();
  const books = useQuery(VoucherService.method.listBooks, { pageSize: 12 });
  const stats = useQueries({
    queries: (books.data?.books ?? []).map((b) => ({
      ...createQueryOptions(VoucherService.method.getBookStats, { bookId: b.id }, { transport }),
      refetchInterval: 5_000,
    })),
  });
  if (books.isPending) return <Loading what="Loading books" />;
  if (books.error) return <ErrorNote error={books.error} />;
  if (books.data.books.length === 0) return <Empty>No books yet: create one under Books.</Empty>;
  const failed = stats.find((s) => s.error);
  return (
    <div>
      {failed && <ErrorNote error={failed.error} />}
      <Bars
        title="Codes per book"
        series={["generated", "assigned", "redeemed"]}
        data={books.data.books.map((b, i) => {
          const s = stats[i]?.data?.stats;
          return { label: b.name, values: [Number(s?.totalCount ?? 0n), Number(s?.assignedCount ?? 0n), Number(s?.redeemedCount ?? 0n)] };
        })}
      />
    </div>
  );
}

function GrantsPerCampaign() {
  const campaigns = useQuery(PromotionService.method.listCampaigns, { pageSize: 12 }, { refetchInterval: 5_000 });
  if (campaigns.isPending) return <Loading what="Loading campaigns" />;
  if (campaigns.error) return <ErrorNote error={campaigns.error} />;
  if (campaigns.data.campaigns.length === 0) return <Empty>No campaigns yet.</Empty>;
  return (
    <Bars
      title="Grants per campaign"
      series={["granted", "quota"]}
      data={campaigns.data.campaigns.map((c) => ({ label: c.name, values: [c.grantedCount, c.quota] }))}
    />
  );
}

function RedemptionsOverTime() {
  const [startTime] = useState(() => timestampFromDate(new Date(Date.now() - 24 * 3600_000)));
  const timeline = useQuery(VoucherService.method.getRedemptionTimeline, { startTime, bucketWidth: { seconds: 3600n } }, { refetchInterval: 30_000 });
  if (timeline.isPending) return <Loading what="Loading redemptions" />;
  if (timeline.error) return <ErrorNote error={timeline.error} />;
  const buckets = timeline.data.buckets;
  if (buckets.every((b) => b.redeemedCount === 0n && b.rolledBackCount === 0n)) return <Empty>No redemptions in the last 24 hours.</Empty>;
  return (
    <Bars
      title="Redemptions per hour (last 24 h)"
      series={["redeemed", "rolled back"]}
      data={buckets.map((b) => ({
        label: b.startTime ? timestampDate(b.startTime).toLocaleTimeString([], { hour: "2-digit" }) : "",
        values: [Number(b.redeemedCount), Number(b.rolledBackCount)],
      }))}
    />
  );
}
