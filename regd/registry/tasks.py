from regd.client.tasks import task_group as task_group
